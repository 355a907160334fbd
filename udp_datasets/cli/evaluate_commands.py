"""``evaluate``, ``ablation``, ``latent-ablation`` and ``evaluate-sd``: measuring protection."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError
from .config_flags import add_config_arguments, config_from_args
from .exit_codes import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from .pretrain_commands import add_corpus_mode


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.regime == "fewshot":
        return cmd_evaluate_fewshot(args)
    if args.subject or args.subjects or args.corpus or args.corpus_mode or args.full:
        raise ConfigError("--subject, --subjects, --corpus, --corpus-mode and --full belong to --regime fewshot")
    from ..evaluate.data import load_images
    from ..evaluate.experiments.evaluate_command import evaluate_bundled, evaluate_pair
    from ..evaluate.experiments.victim_runs import EvalSettings
    from ..evaluate.purify.filters import ATTACKS
    from ..evaluate.report import verdict
    from ..evaluate.victims.pixel import VictimConfig

    attacks = () if args.attacks in ("", "none") else tuple(a.strip() for a in args.attacks.split(","))
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ConfigError(f"unknown attack(s) {unknown}; choose from {sorted(ATTACKS)} or 'none'")
    victim = VictimConfig(architecture=args.victim_arch, resolution=args.victim_resolution,
                          train_steps=args.victim_steps, batch_size=args.victim_batch_size,
                          learning_rate=args.victim_lr, ema_decay=None if args.no_ema else 0.999,
                          seed=args.victim_seed, sample_steps=args.sample_steps, sample_eta=args.sample_eta)
    feature_kwargs = {"weights_path": args.inception_weights} if args.feature == "inception" else {}
    settings = EvalSettings(victim=victim, num_samples=args.num_samples, feature=args.feature,
                            feature_kwargs=feature_kwargs, attacks=attacks, seed=args.victim_seed)
    if (args.clean is None) != (args.protected is None):
        raise ConfigError("give both --clean and --protected, or neither (bundled data)")
    if args.clean is not None:
        clean = load_images(args.clean, args.image_column, args.limit)
        protected = load_images(args.protected, args.image_column, args.limit)
        report = evaluate_pair(clean, protected, args.out, settings, args.holdout_fraction)
    else:
        from ..evaluate.experiments.ablation import BASE

        # bundled mode protects with the ablation's CPU-sized recipe unless told otherwise
        config = config_from_args(args, base=None if args.config_file else BASE)
        if not hasattr(args, "resolution"):  # the surrogate works at the data's own resolution
            config = config.replace(resolution=args.victim_resolution)
        report = evaluate_bundled(config, args.out, settings, count=args.bundled_count,
                                  size=args.victim_resolution, holdout_fraction=args.holdout_fraction)
    print(verdict(report["victims"]))
    print(f"report: {Path(args.out) / 'report.md'} ({report['seconds']:.0f} s)")
    return EXIT_OK


def fewshot_cache_dir(args: argparse.Namespace) -> Path:
    """Where pretrained few-shot models are kept: --cache-dir, else beside the fitted surrogates."""
    from ..models.session import default_surrogate_cache

    return Path(args.cache_dir) if args.cache_dir else default_surrogate_cache().parent / "fewshot"


def study_list(flag: str, value: str, known: Sequence[str] | None) -> tuple:
    """A comma list flag of the few-shot study, checked: names from ``known`` (budget levels, digits,
    when ``known`` is None); ``none`` (purifications, sweep) for an empty list; noise is always a method."""
    chosen = tuple(v.strip() for v in value.split(",") if v.strip())
    optional = flag in ("purifications", "sweep_levels")
    if optional and chosen == ("none",):
        return ()
    bad = [v for v in chosen if (not _known_name(flag, v, known) if known is not None
                                 else not (v.isdigit() and 0 < int(v) < 256))]
    if bad or not chosen:
        choices = ", ".join(known) if known is not None else "levels 1-255"
        choices += ", diffpureT (DiffPure from t* = T, 1-999)" if flag == "purifications" else ""
        raise ConfigError(f"--{flag.replace('_levels', '').replace('_', '-')} {value!r}: choose from {choices}"
                          + (" (or none)" if optional else ""))
    if flag == "sweep_levels":
        return tuple(int(v) for v in chosen)
    if flag == "methods" and "noise" not in chosen:
        return ("noise", *chosen)  # every method is judged against noise of the same budget
    return chosen


def _known_name(flag: str, value: str, known: Sequence[str]) -> bool:
    """A known name; for ``--methods`` also a variant ``PRESET:field=value:...`` whose fields are config fields
    (a variant whose fields the config refuses fails here with the config's own reason)."""
    if value in known:
        return True
    if flag == "purifications":
        from ..evaluate.experiments.fewshot_tasks import is_purification

        return is_purification(value)
    if flag != "methods" or ":" not in value:
        return False
    from ..config import ProtectionConfig
    from ..evaluate.experiments.fewshot_tasks import parse_method

    try:
        preset, overrides = parse_method(value)
        unknown = sorted(set(overrides) - {f.name for f in fields(ProtectionConfig)})
        if unknown:
            raise ValueError(f"{unknown} not ProtectionConfig fields (the README's configuration table lists them)")
        ProtectionConfig().replace(**overrides)
    except ValueError as error:  # ConfigError is a ValueError
        raise ConfigError(f"--methods {value!r}: {error}") from error
    return preset in known and preset != "noise"


def cmd_evaluate_fewshot(args: argparse.Namespace) -> int:
    """The few-shot regime: bundled subjects (or --subject FOLDER), reduced study unless --full."""
    from dataclasses import replace

    from ..evaluate.experiments import fewshot
    from ..evaluate.experiments.fewshot_scores import FOLLOWUP_KEYS
    from ..evaluate.glyphs import STRUCTURED_SUBJECTS
    from ..evaluate.subjects import BUNDLED_CORPUS, GLYPH_CORPUS, SUBJECTS, any_subject, folder_subject, read_corpus

    if args.clean or args.protected:
        raise ConfigError("--regime fewshot protects the subject itself: give --subject FOLDER, not --clean/--protected")
    if args.corpus_mode and not args.corpus:
        raise ConfigError("--corpus-mode says how a --corpus FOLDER is read; give --corpus FOLDER")
    settings = fewshot.FewshotSettings() if args.full else fewshot.REDUCED
    protection = config_from_args(args, base=settings.protection)
    changes = {"protection": protection, "levels": protection.budget_levels, "size": args.size,
               "pretrain": replace(settings.pretrain, per_channel=args.latent_norm == "channel")}
    if args.seeds:
        if not all(s.strip().isdigit() for s in args.seeds.split(",")):
            raise ConfigError(f"--seeds {args.seeds!r}: a comma list of non-negative integers, e.g. 0,1,2")
        changes["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    if args.workers is not None:
        changes["workers"] = args.workers
    if args.victim_check_factor is not None:
        if not args.victim_check_factor > 0:
            raise ConfigError(f"--victim-check-factor {args.victim_check_factor}: a positive number (default 10)")
        changes["victim_check_factor"] = args.victim_check_factor
    if args.past_failed_controls:
        changes["past_failed_controls"] = True
    rates = finetune_rates(args.finetune_lr)
    if len(rates) == 1:  # the victims' cache key holds the recipe: another rate, other victims
        changes["full"] = replace(settings.full, learning_rate=rates[0])
    if args.pretrain_from_scratch:
        changes["shipped_pretraining"] = False
    if args.judge_augment != "warp":
        changes["judge_augment"] = args.judge_augment
    for flag, known in (("methods", fewshot.METHODS), ("modes", ("full", "lora")),
                        ("purifications", fewshot.PURIFICATIONS), ("sweep_levels", None),
                        ("subjects", (*STRUCTURED_SUBJECTS, *SUBJECTS))):
        value = getattr(args, flag)
        if value:
            changes[flag] = study_list(flag, value, known)
    if args.followups:  # after --methods: a method named here must be one the study runs
        changes["followup_sets"] = study_list("followups", args.followups,
                                              tuple(dict.fromkeys((*FOLLOWUP_KEYS, *changes.get("methods", settings.methods)))))
    if args.subject and args.subjects:
        raise ConfigError("--subject FOLDER (your images) and --subjects (bundled ones) exclude each other")
    if args.judge != "auto" and not args.subject:
        raise ConfigError("--judge chooses the judge of --subject FOLDER; bundled subjects have their own "
                          "(shape for ampersand, hash, percent; texture for cat, ihc, retina)")
    if args.judge == "faces":
        from ..evaluate.metrics.faces import INSTALL_HINT, faces_available

        if not faces_available():
            raise ConfigError(f"--judge faces needs the faces extra (dlib): {INSTALL_HINT}")
    if args.subject:
        subject = folder_subject(args.subject, args.holdout_fraction, seed=0, size=args.size,
                                 kind="auto" if args.judge == "faces" else args.judge)
        subjects = {subject.name: subject}
        changes["subjects"] = (subject.name,)
    settings = replace(settings, **changes)
    if not args.subject:
        structured = [n for n in settings.subjects if n in STRUCTURED_SUBJECTS]
        if structured and len(structured) != len(settings.subjects):
            raise ConfigError(f"--subjects {','.join(settings.subjects)}: structured subjects ({', '.join(STRUCTURED_SUBJECTS)}) "
                              f"and texture ones ({', '.join(SUBJECTS)}) pretrain on different corpora; run them as "
                              "two studies")
        subjects = {n: any_subject(n, 0, settings.size, settings.n_train, settings.n_heldout, settings.n_judge)
                    for n in settings.subjects}
    count, seed = settings.pretrain.corpus_count, settings.pretrain.corpus_seed
    kind = GLYPH_CORPUS if all(s.kind == "shape" for s in subjects.values()) else BUNDLED_CORPUS
    corpus, record = read_corpus(args.corpus or kind, count, seed, settings.size, args.corpus_mode,
                                 named_by_user=bool(args.corpus))
    return run_fewshot_study(args, settings, rates, subjects, corpus, record["description"])


def run_fewshot_study(args: argparse.Namespace, settings: Any, rates: list[float], subjects: dict[str, Any],
                      corpus: list[Any], source: str) -> int:
    """Run the study (one per rate when ``--finetune-lr`` lists several), print its verdict; the exit code."""
    from ..evaluate.experiments import fewshot

    if len(rates) > 1:
        from ..evaluate.experiments.fewshot_rates import run_rate_sweep

        summary = run_rate_sweep(args.out, settings, rates, subjects, corpus, fewshot_cache_dir(args),
                                 judge_faces=args.judge == "faces", corpus_source=source)
        print(summary["verdict"])
        print(f"report: {Path(args.out) / 'report.md'} (one study per rate beside it)")
        # a rate whose controls failed is a rate the attacker may pick where nothing was measured
        return EXIT_FAILED if summary["failed_rates"] else EXIT_OK
    report = fewshot.run_fewshot(args.out, settings, subjects, corpus, fewshot_cache_dir(args),
                                 judge_faces=args.judge == "faces", corpus_source=source)
    print(report["verdict"])
    print(f"report: {Path(args.out) / 'report.md'} ({report['timings']['total']:.0f} s)")
    # a harness that failed its controls, or could not compute one, gave no verdict: a script around it must not
    # read success (the rate sweep counts a rate the same way)
    return EXIT_OK if report["controls"]["passed"] is True else EXIT_FAILED


def finetune_rates(value: str | None) -> list[float]:
    """``--finetune-lr``: one learning rate, or a comma list to sweep (the attacker picks the rate)."""
    if value is None:
        return []
    try:
        rates = [float(v) for v in value.split(",")]
    except ValueError:
        rates = []
    if not rates or not all(0 < r < float("inf") for r in rates) or len(set(rates)) != len(rates):
        raise ConfigError(f"--finetune-lr {value!r}: a positive learning rate, or a comma list of distinct ones "
                          "to sweep, e.g. 3e-4,1e-3 (default 1e-3)")
    return rates


def cmd_ablation(args: argparse.Namespace) -> int:
    from ..evaluate.experiments.ablation import run_ablation
    from ..evaluate.experiments.victim_runs import EvalSettings
    from ..evaluate.report import verdict
    from ..evaluate.victims.pixel import VictimConfig

    victim = VictimConfig(resolution=args.size, train_steps=args.victim_steps, batch_size=args.victim_batch_size)
    settings = EvalSettings(victim=victim, num_samples=args.num_samples, attacks=())
    if getattr(args, "switches", False):
        from ..evaluate.experiments.switch_ablation import run_switches

        result = run_switches(args.out, settings, count=args.count, size=args.size)
        print(verdict(result["victims"]))
        print(f"tables: {Path(args.out) / 'switches_table.md'} ({result['seconds']:.0f} s)")
        return EXIT_OK
    result = run_ablation(args.out, settings, count=args.count, size=args.size, sweep=not args.no_sweep)
    print(verdict(result["victims"]))
    print(f"tables: {Path(args.out) / 'ablation_table.md'} ({result['seconds']:.0f} s)")
    return EXIT_OK


def cmd_latent_ablation(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..evaluate.experiments.latent_ablation import LATENT_VICTIM, LatentSetup, run_latent_ablation
    from ..evaluate.experiments.victim_runs import EvalSettings
    from ..evaluate.report import verdict

    setup = LatentSetup(pretrain_count=args.pretrain_count, train_count=args.train_count,
                        holdout_count=args.holdout_count, pretrain_steps=args.pretrain_steps,
                        surrogate_steps=args.surrogate_steps)
    setup = replace(setup, autoencoder=replace(setup.autoencoder, train_steps=args.vae_steps))
    victim = replace(LATENT_VICTIM, train_steps=args.victim_steps)
    settings = EvalSettings(victim=victim, num_samples=args.num_samples, attacks=())
    result = run_latent_ablation(args.out, settings, setup, sweep=not args.no_sweep)
    print(verdict(result["victims"]))
    print(f"tables: {Path(args.out) / 'latent_ablation_table.md'} ({result['seconds']:.0f} s)")
    return EXIT_OK


def cmd_evaluate_sd(args: argparse.Namespace) -> int:
    from ..evaluate.experiments.evaluate_sd_command import evaluate_dreambooth
    from ..evaluate.metrics import faces
    from ..evaluate.victims.sd_lora import DreamBoothError, DreamBoothSettings, load_subject_images

    if args.judge == "faces" and not faces.faces_available():
        raise ConfigError(f"--judge faces needs the faces extra (dlib): {faces.INSTALL_HINT}")
    try:
        settings = DreamBoothSettings(
            resolution=args.resolution, train_steps=args.steps, batch_size=args.batch_size,
            gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
            lora_rank=args.lora_rank, center_crop=not args.random_crop, random_flip=args.random_flip,
            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
            vae_slicing=args.vae_slicing, vae_tiling=args.vae_tiling, num_samples=args.num_samples,
            sample_prompts=tuple(args.sample_prompt or ()), sample_steps=args.sample_steps,
            guidance_scale=args.guidance_scale, sample_batch_size=args.sample_batch_size, seed=args.seed,
            device=args.device, revision=args.revision, variant=args.variant)
        clean = load_subject_images(args.clean, args.image_column, args.limit)
        protected = load_subject_images(args.protected, args.image_column, args.limit)
        report = evaluate_dreambooth(args.model, clean, protected, args.prompt, args.out, settings,
                                     judge=args.judge)
    except (DreamBoothError, faces.FaceMetricsUnavailable) as exc:
        print(f"udp-datasets evaluate-sd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(report["verdict"])
    print(f"report: {Path(args.out) / 'report.md'} ({report['seconds']:.0f} s)")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The evaluation subcommands."""
    p = sub.add_parser("evaluate", help="train victims on clean vs protected data and compare them")
    p.add_argument("--regime", choices=["pixel", "fewshot"], default="pixel",
                   help="pixel: victims trained from scratch (default); fewshot: a pretrained latent model "
                        "fine-tuned on a few images of one subject, every method side by side (docs/efficacy.md)")
    p.add_argument("--subject", help="fewshot: a folder of your own subject's images (split into training and "
                   "held-out by --holdout-fraction); default: the bundled subjects")
    p.add_argument("--subjects", help="fewshot: comma list of bundled subjects, structured (ampersand, hash, percent: "
                   "the default) or texture (cat, ihc, retina), one kind per study")
    p.add_argument("--corpus", help="fewshot: a folder of generic images to pretrain on, read as --corpus-mode "
                   "says, or 'glyphs' / 'bundled' for the generated glyphs / bundled photographs (default: glyphs for "
                   "structured subjects, bundled photographs for texture subjects and --subject FOLDER)")
    add_corpus_mode(p)
    p.add_argument("--judge", choices=["auto", "shape", "texture", "faces"], default="auto",
                   help="fewshot --subject FOLDER: what recognises your subject: the CNN shape judge, the colour / "
                        "texture judge, or face identity (ISM and FDFR, the [faces] extra); auto: the class judge "
                        "that recognises your held-out images best")
    p.add_argument("--victim-check-factor", type=float,
                   help="fewshot: how far (x the FD of a corpus split through the VAE) the pretrained victim's "
                        "samples may be from its corpus before the study stops (default 10); a report run with "
                        "another factor says so in its controls")
    p.add_argument("--past-failed-controls", action="store_true",
                   help="fewshot: run the study's tables even when a control fails, as a labelled diagnostic (the "
                        "report still says the harness cannot see protection and gives no verdict; exit status 1)")
    p.add_argument("--pretrain-from-scratch", action="store_true",
                   help="fewshot: pretrain the victim and surrogate even when the package ships them (the default "
                        "glyph corpus and recipe: about an hour at one thread)")
    p.add_argument("--latent-norm", choices=["channel", "scalar"], default="channel",
                   help="fewshot: the victim's latent normalisation: each channel standardised by its corpus "
                        "statistics (FLUX.2's convention, default) or one scalar shift and scale (SD's)")
    p.add_argument("--finetune-lr",
                   help="fewshot: the full fine-tune's learning rate (default 1e-3), or a comma list to sweep, e.g. "
                        "3e-4,1e-3: one study per rate in OUT/lr-RATE/ and a summary with each method's worst case "
                        "over the rates. An unauthorised fine-tune picks its own rate (docs/efficacy.md: in a "
                        "diagnostic on one subject, PhotoGuard erased 0.78 at 3e-4 and 0.40 at 1e-3)")
    p.add_argument("--size", type=int, choices=[64, 128], default=64,
                   help="fewshot: image side (64: 8x8 TAEF2 latents; 128: 16x16, about 4x the CPU time)")
    p.add_argument("--full", action="store_true",
                   help="fewshot: the full committed study (every method, 3 seeds, full + LoRA, purifications, "
                        "budget sweep; hours on a CPU) instead of the reduced one (~20 min on 2 cores)")
    p.add_argument("--seeds", help="fewshot: comma list of seeds (victim and protection), e.g. 0,1,2")
    p.add_argument("--workers", type=int, help="fewshot: worker processes (default 2, one thread each)")
    p.add_argument("--methods", help="fewshot: comma list of the methods to compare, e.g. photoguard,udp (noise, "
                   "the baseline, is always added); a preset with config fields over it is PRESET:field=value:..., "
                   "e.g. advdm:timesteps=eudp (eot's list is +-joined: photoguard:eot=noise+jpeg); "
                   "default: the reduced or --full study's")
    p.add_argument("--modes", help="fewshot: fine-tuning modes, comma list of full,lora")
    p.add_argument("--purifications", help="fewshot: comma list of jpeg75,noise0.05,diffpure,impress, or none "
                   "(default: the reduced or --full study's); diffpureT is DiffPure from t* = T (default 300), "
                   "e.g. diffpure100")
    p.add_argument("--followups", help="fewshot: what the purifications and the budget sweep run on, a comma list "
                   "of best, second, ours, peer (picked by the table), noise, all, or method names from --methods "
                   "(default: the reduced or --full study's: best; noise,best,second)")
    p.add_argument("--sweep", dest="sweep_levels", help="fewshot: budget sweep levels in 8-bit steps, e.g. 4,16, "
                   "or none")
    p.add_argument("--cache-dir", help="fewshot: where the pretrained models are kept "
                   "(default: ~/.cache/udp_datasets/fewshot)")
    p.add_argument("--clean", help="clean dataset (folder, save_to_disk, Hub id); omit for bundled data")
    p.add_argument("--protected", help="its protected copy, same order (e.g. the DST of `protect`)")
    p.add_argument("--out", default="udp-report", help="report folder (default: ./udp-report)")
    p.add_argument("--image-column", default="image")
    p.add_argument("--limit", type=int, help="use only the first N images of each dataset")
    p.add_argument("--judge-augment", choices=["warp", "strong"], default="warp",
                   help="fewshot: which of the two shape judges decides, by its training augmentations: warp "
                        "(rotation, scale, shift, blur; 0.3.7's) or strong (also bent and thicker strokes and a "
                        "blotchy texture); the other one is trained too, and a protection must hold under both")
    p.add_argument("--holdout-fraction", type=float, default=0.25,
                   help="share of clean images held out as the reference (never trained on)")
    p.add_argument("--bundled-count", type=int, default=1200, help="bundled photo patches to use")
    p.add_argument("--victim-arch", default="victim-tiny")
    p.add_argument("--victim-resolution", type=int, default=16)
    # 1000 steps / 400 samples keep the default bundled run (6 victims) within 20 min on 2 CPU cores;
    # the committed ablation uses 1500 / 500 (udp-datasets ablation)
    p.add_argument("--victim-steps", type=int, default=1000)
    p.add_argument("--victim-batch-size", type=int, default=32)
    p.add_argument("--victim-lr", type=float, default=1e-3)
    p.add_argument("--victim-seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="sample from the raw weights, not the EMA")
    p.add_argument("--sample-steps", type=int, default=100, help="DDIM steps")
    p.add_argument("--sample-eta", type=float, default=1.0, help="DDIM eta (1 = ancestral sampling)")
    p.add_argument("--num-samples", type=int, default=400)
    p.add_argument("--attacks", default="jpeg75,jpeg90,resize50,blur0.5",
                   help="comma list of jpeg75, jpeg90, resize50, blur0.5, noise0.05, or 'none'")
    p.add_argument("--feature", choices=["fitted", "inception"], default="fitted")
    p.add_argument("--inception-weights", help="local Inception weights file (nothing is downloaded)")
    add_config_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ablation", help="the committed ablation and budget sweep (docs/efficacy.md)")
    p.add_argument("--out", default="udp-ablation")
    p.add_argument("--count", type=int, default=1200)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--victim-steps", type=int, default=1500)
    p.add_argument("--victim-batch-size", type=int, default=32)
    p.add_argument("--num-samples", type=int, default=500)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--switches", action="store_true",
                   help="measure the method switches (timestep ranges, matching, pools, clusters) instead")
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser("latent-ablation", help="the ablation against latent (SD-like) victims: local VAE, "
                       "pretrained then fine-tuned latent DDPMs, encoder amplification (docs/efficacy.md)")
    p.add_argument("--out", default="udp-latent-ablation")
    p.add_argument("--pretrain-count", type=int, default=800, help="clean images for the VAE and pretraining")
    p.add_argument("--train-count", type=int, default=400, help="images protected and fine-tuned on")
    p.add_argument("--holdout-count", type=int, default=300, help="clean images the samples are scored against")
    p.add_argument("--vae-steps", type=int, default=1000)
    p.add_argument("--pretrain-steps", type=int, default=2000, help="victim pretraining steps")
    p.add_argument("--surrogate-steps", type=int, default=1500, help="surrogate pretraining steps")
    p.add_argument("--victim-steps", type=int, default=400, help="fine-tuning steps per victim")
    p.add_argument("--num-samples", type=int, default=300)
    p.add_argument("--no-sweep", action="store_true")
    p.set_defaults(func=cmd_latent_ablation)

    p = sub.add_parser("evaluate-sd", help="LoRA DreamBooth-style Stable Diffusion victims on clean vs "
                       "protected images of one subject or style")
    p.add_argument("--model", required=True, help="Stable Diffusion folder (diffusers layout, safetensors) or Hub id")
    p.add_argument("--clean", required=True, help="clean images (folder, save_to_disk, Hub id)")
    p.add_argument("--protected", required=True, help="their protected copy, same order (e.g. the DST of `protect`)")
    p.add_argument("--prompt", required=True, help='instance prompt, e.g. "a photo of sks person"')
    p.add_argument("--out", default="udp-sd-report", help="report folder (default: ./udp-sd-report)")
    p.add_argument("--image-column", default="image")
    p.add_argument("--limit", type=int, help="use only the first N images of each set")
    p.add_argument("--steps", type=int, default=400, help="LoRA training steps per victim")
    p.add_argument("--lora-rank", type=int, default=4)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--gradient-accumulation-steps", type=int, default=1)
    p.add_argument("--random-crop", action="store_true", help="random instead of center crops")
    p.add_argument("--random-flip", action="store_true")
    p.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"], default="auto",
                   help="auto: fp16 on CUDA, none on CPU (fp16/bf16 need CUDA)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="less memory, slower")
    p.add_argument("--vae-slicing", action="store_true")
    p.add_argument("--vae-tiling", action="store_true")
    p.add_argument("--num-samples", type=int, default=8, help="images generated per victim")
    p.add_argument("--sample-prompt", action="append", help="prompt to sample with (repeatable; default --prompt)")
    p.add_argument("--sample-steps", type=int, default=30)
    p.add_argument("--guidance-scale", type=float, default=7.5)
    p.add_argument("--sample-batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--revision", help="model revision (Hub)")
    p.add_argument("--variant", help="weight variant, e.g. fp16 for *.fp16.safetensors")
    p.add_argument("--judge", choices=["none", "faces"], default="none",
                   help="faces: also score each victim's samples with Anti-DreamBooth's FDFR and ISM against the "
                        "clean images (needs pip install 'udp-datasets[faces]')")
    p.set_defaults(func=cmd_evaluate_sd)
