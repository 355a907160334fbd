"""``udp-datasets``: protect | fit | evaluate | evaluate-sd | publish | verify | demo | config.

Every :class:`ProtectionConfig` field is also a flag (``--epsilon 8/255``,
``--objective adversarial``, ``--random-start``...); flags override
``--config-file`` (JSON or YAML), which overrides the defaults.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from ..config import ConfigError, ProtectionConfig, config_fields, parse_epsilon

logger = logging.getLogger("udp_datasets")

EXIT_OK, EXIT_USAGE, EXIT_QUARANTINED, EXIT_FAILED = 0, 2, 3, 1


# ------------------------------------------------------------------ config flags
def _flag_type(tp: Any) -> tuple[Callable[[str], Any] | None, list[Any] | None, bool]:
    """(converter, choices, is_bool) for a config field's type annotation."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        conv, choices, is_bool = _flag_type(inner[0])
        return (lambda s: None if s.lower() == "none" else conv(s)), choices, is_bool  # type: ignore[misc]
    if origin is typing.Literal:
        return str, list(args), False
    if tp is bool:
        return None, None, True
    return tp, None, False


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protection config (override --config-file)")
    group.add_argument("--config-file", type=Path, help="JSON or YAML file of config fields")
    hints = typing.get_type_hints(ProtectionConfig)
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        conv, choices, is_bool = _flag_type(hints[f.name])
        if f.name == "epsilon":
            conv = parse_epsilon
        if is_bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS)
        else:
            group.add_argument(flag, dest=f.name, type=conv, choices=choices, default=argparse.SUPPRESS,
                               metavar=None if choices else f.name.upper())


def config_from_args(args: argparse.Namespace, base: ProtectionConfig | None = None) -> ProtectionConfig:
    """Defaults (or ``base``) < ``--config-file`` < flags."""
    if getattr(args, "config_file", None):
        base = ProtectionConfig.from_file(args.config_file)
    base = base or ProtectionConfig()
    overrides = {f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)}
    return base.replace(**overrides)


# ------------------------------------------------------------------ commands
def cmd_protect(args: argparse.Namespace) -> int:
    from ..jobs.dataset_job import format_summary, protect_dataset
    from ..jobs.shard_job import run_cli, wants_runner

    config = config_from_args(args)
    if wants_runner(args):  # shards, --format parquet, --num-processes, accelerate launch
        return run_cli(args, config)
    summary = protect_dataset(args.src, args.dst, config, split=args.split, image_column=args.image_column,
                              key_column=args.key_column, output_format=args.format,
                              fit_output=args.fit_output, num_proc=args.num_proc,
                              overwrite=args.overwrite)
    print(format_summary(summary))
    if summary.errors and not args.allow_errors:
        return EXIT_QUARANTINED
    return EXIT_OK


def cmd_fit(args: argparse.Namespace) -> int:
    from ..protector import Protector
    from ..sources import open_source

    config = config_from_args(args)
    ds = open_source(args.src, split=args.split)
    protector = Protector(config, image_column=args.image_column)
    result = protector.fit(ds, output_dir=args.out)
    last = result.history[-1] if result.history else {}
    print(f"fitted surrogate saved to {args.out} ({result.num_samples} images; last round {last})")
    print(f"protect with: udp-datasets protect SRC DST --surrogate {args.out} ...")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(args.out, quick=args.quick)
    print(f"side-by-side picture: {result['picture']}")
    print(f"summary:              {result['summary_path']}")
    print(f"protected dataset:    {result['dataset']}")
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.attacks import ATTACKS
    from ..evaluate.experiment import EvalSettings
    from ..evaluate.pipeline import evaluate_bundled, evaluate_pair, load_images
    from ..evaluate.report import verdict
    from ..evaluate.victim import VictimConfig

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
        from ..evaluate.ablation import BASE

        # bundled mode protects with the ablation's CPU-sized recipe unless told otherwise
        config = config_from_args(args, base=None if args.config_file else BASE)
        if not hasattr(args, "resolution"):  # the surrogate works at the data's own resolution
            config = config.replace(resolution=args.victim_resolution)
        report = evaluate_bundled(config, args.out, settings, count=args.bundled_count,
                                  size=args.victim_resolution, holdout_fraction=args.holdout_fraction)
    print(verdict(report["victims"]))
    print(f"report: {Path(args.out) / 'report.md'} ({report['seconds']:.0f} s)")
    return EXIT_OK


def cmd_ablation(args: argparse.Namespace) -> int:
    from ..evaluate.ablation import run_ablation
    from ..evaluate.experiment import EvalSettings
    from ..evaluate.report import verdict
    from ..evaluate.victim import VictimConfig

    victim = VictimConfig(resolution=args.size, train_steps=args.victim_steps, batch_size=args.victim_batch_size)
    settings = EvalSettings(victim=victim, num_samples=args.num_samples, attacks=())
    if getattr(args, "leads", False):
        from ..evaluate.leads import run_leads

        result = run_leads(args.out, settings, count=args.count, size=args.size)
        print(verdict(result["victims"]))
        print(f"tables: {Path(args.out) / 'leads_table.md'} ({result['seconds']:.0f} s)")
        return EXIT_OK
    result = run_ablation(args.out, settings, count=args.count, size=args.size, sweep=not args.no_sweep)
    print(verdict(result["victims"]))
    print(f"tables: {Path(args.out) / 'ablation_table.md'} ({result['seconds']:.0f} s)")
    return EXIT_OK


def cmd_latent_ablation(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ..evaluate.experiment import EvalSettings
    from ..evaluate.latent_ablation import LATENT_VICTIM, LatentSetup, run_latent_ablation
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
    from ..evaluate.dreambooth import DreamBoothError, DreamBoothSettings, evaluate_dreambooth, load_subject_images

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
        report = evaluate_dreambooth(args.model, clean, protected, args.prompt, args.out, settings)
    except DreamBoothError as exc:
        print(f"udp-datasets evaluate-sd: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(report["verdict"])
    print(f"report: {Path(args.out) / 'report.md'} ({report['seconds']:.0f} s)")
    return EXIT_OK


def _hub_error_exit(command: str, exc: Exception) -> int:
    """Hub errors: not found / not allowed -> usage (2), anything else -> failure (1)."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    print(f"udp-datasets {command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
    return EXIT_USAGE if status in (401, 403, 404) else EXIT_FAILED


def cmd_publish(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from ..publish.hub import PublishError, PublishRefused, publish
    from ..publish.verify import VerifyError

    try:
        result = publish(args.dir, args.repo_id, private=args.private, revision=args.revision,
                         commit_message=args.commit_message, create_pr=args.create_pr, source=args.source,
                         source_split=args.source_split, license=args.license, pretty_name=args.pretty_name,
                         eval_report=args.eval_report, max_shard_size=args.max_shard_size,
                         staging_dir=args.staging_dir)
    except PublishRefused as exc:
        print(exc.report.format(args.max_listed))
        print(f"udp-datasets publish: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (PublishError, VerifyError, OSError, ValueError) as exc:
        print(f"udp-datasets publish: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HfHubHTTPError as exc:
        return _hub_error_exit("publish", exc)
    print(f"published   {result.report.verified} verified images -> {result.url}")
    print(f"revision    {result.revision or 'main'} (commit {result.commit})")
    if result.pr_url:
        print(f"pull request {result.pr_url}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from ..publish.hub import PublishError, verify

    try:
        report = verify(args.target, source=args.source, source_split=args.source_split,
                        image_column=args.image_column)
    except PublishError as exc:
        print(f"udp-datasets verify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HfHubHTTPError as exc:
        return _hub_error_exit("verify", exc)
    print(report.format(args.max_listed))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_config(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    print(config.to_json())
    print(f"# hash {config.hash()}", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="udp-datasets", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("protect", help="protect every image of a dataset")
    p.add_argument("src", help="image folder, save_to_disk folder, Hub dataset id, or shards: a .tar / "
                   ".parquet file, brace pattern ('data-{000000..000099}.tar'), URL or folder of them")
    p.add_argument("dst", help="output folder (created; must not exist unless --overwrite)")
    p.add_argument("--split", help="split to protect when SRC has several")
    p.add_argument("--image-column", default="image")
    p.add_argument("--key-column", help="column of stable ids that seed per-sample randomness")
    p.add_argument("--format", choices=["arrow", "imagefolder", "parquet"], default="arrow",
                   help="arrow: save_to_disk folder in DST/data; imagefolder: PNG files + metadata.jsonl")
    p.add_argument("--fit-output", help="where the fitted surrogate is saved (default: cache folder)")
    p.add_argument("--num-proc", type=int, help="worker processes for datasets.map (one per GPU)")
    p.add_argument("--num-processes", type=int, help="shard runner: re-launch on N processes with accelerate")
    p.add_argument("--image-ext", help="shard runner: tar member extensions that are images (comma list)")
    p.add_argument("--rows-per-shard", type=int, help="shard runner: rows per output shard for a datasets SRC")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--allow-errors", action="store_true",
                   help=f"exit 0 even when images were quarantined (default exit {EXIT_QUARANTINED})")
    add_config_arguments(p)
    p.set_defaults(func=cmd_protect)

    p = sub.add_parser("fit", help="train the surrogate on a dataset and save it")
    p.add_argument("src")
    p.add_argument("out", help="folder for the fitted surrogate (diffusers DDPMPipeline layout)")
    p.add_argument("--split")
    p.add_argument("--image-column", default="image")
    add_config_arguments(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("demo", help="offline demo on photographs and faces shipped with scikit-image")
    p.add_argument("--out", default="udp-demo", help="output folder (default: ./udp-demo)")
    p.add_argument("--quick", action="store_true", help="smaller budget, for smoke tests")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="train victims on clean vs protected data and compare them")
    p.add_argument("--clean", help="clean dataset (folder, save_to_disk, Hub id); omit for bundled data")
    p.add_argument("--protected", help="its protected copy, same order (e.g. the DST of `protect`)")
    p.add_argument("--out", default="udp-report", help="report folder (default: ./udp-report)")
    p.add_argument("--image-column", default="image")
    p.add_argument("--limit", type=int, help="use only the first N images of each dataset")
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
                   help="comma list of jpeg75, jpeg90, resize50, blur0.5, or 'none'")
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
    p.add_argument("--leads", action="store_true",
                   help="measure the METHOD.md leads (timestep ranges, matching, pools, clusters) instead")
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
    p.set_defaults(func=cmd_evaluate_sd)

    p = sub.add_parser("publish", help="verify a protected folder and push it to the Hugging Face Hub")
    p.add_argument("dir", help="output folder of `protect` (Arrow, image folder, tar or Parquet shards)")
    p.add_argument("repo_id", help="dataset repo, namespace/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (refused if it is public)")
    p.add_argument("--revision", help="branch to commit to (created from main if missing)")
    p.add_argument("--commit-message")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--source", help="the clean source: also check each image's L-inf against it")
    p.add_argument("--source-split")
    p.add_argument("--license", help="card license (default: the source card's, when known)")
    p.add_argument("--pretty-name")
    p.add_argument("--eval-report", help="report.json of `udp-datasets evaluate` to show in the card")
    p.add_argument("--max-shard-size", default="500MB", help="Parquet shard size for Arrow folders")
    p.add_argument("--staging-dir", help="where the upload is staged (default: the temp folder)")
    p.add_argument("--max-listed", type=int, default=20, help="samples listed per category on failure")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("verify", help="re-hash a protected folder or Hub dataset against its manifest")
    p.add_argument("target", help="folder, or Hub dataset REPO_ID[@revision]")
    p.add_argument("--source", help="the clean source: measure each image's L-inf against it")
    p.add_argument("--source-split")
    p.add_argument("--image-column", help="image column of a local folder (default: from the job record)")
    p.add_argument("--json", help="also write the full report as JSON to this file")
    p.add_argument("--max-listed", type=int, default=20, help="samples listed per category")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("config", help="print the resolved config as JSON")
    add_config_arguments(p)
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args._argv = list(sys.argv[1:] if argv is None else argv)  # --num-processes re-launches with these
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from ..evaluate.features import FeatureExtractorUnavailable
    from ..images import ImageError
    from ..protector import ColumnError
    from ..sinks.atomic import OutputExistsError
    from ..sources import SourceError
    from ..models.surrogate import SurrogateError

    try:
        return args.func(args)
    except (ConfigError, ColumnError, SourceError, SurrogateError, ImageError, OutputExistsError,
            FeatureExtractorUnavailable) as exc:
        print(f"udp-datasets {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

