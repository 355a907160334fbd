"""The few-shot study: does protecting a subject's images stop a latent model from learning the subject?

    udp-datasets evaluate --regime fewshot [--full] [--subject FOLDER] [--corpus FOLDER] --out DIR

Stages (each cached under ``out`` or the shared pretraining cache, so a study resumes where it stopped).
The instrument comes first: each gate that fails stops the study with a report that says so on its
first line, and gives no verdict (issue 17).

1. **pretrain** (:mod:`..victims.fewshot_pretrain`): TAEF2 latents of the corpus; the latent victim UNet
   and the protector's differently shaped surrogate UNet, each a latent pair. *Gate 1*: the victim's
   samples are within :data:`~.fewshot_scores.VICTIM_QUALITY_FACTOR` of a corpus split's FD;
2. **judges** (:mod:`..metrics.subject`, :mod:`..metrics.shape_judge`): trained on clean images only,
   validated on held-out ones;
3. **controls** (first ``control_seeds`` seeds): the never-shown model, the clean fine-tune, random
   noise (negative control), PhotoGuard at ``control_levels`` (positive control, plainly visible) and
   a fine-tune on another subject's images (substitution control). *Gate 2*: every control passes;
4. **protect** every subject's training set with every method at epsilon, one protection seed per
   victim seed, through :class:`~udp_datasets.Protector` and the presets (:mod:`.fewshot_tasks`);
5. **victims**: the pretrained victim fine-tuned (full and LoRA) on clean, each protected and the
   noise copy, same seeds;
6. **follow-ups** chosen by a rule fixed before any result is seen (:func:`pick`): by default the two
   best methods by goal progress; each purification applied to their sets, to noise and to the clean
   images; a budget sweep of both beside noise;
7. **report** (:mod:`.fewshot_report`): report.json (with ``card_markdown``), report.md, grids, plots.

Work runs in ``workers`` processes of ``threads`` intra-op threads each (tqdm shows each stage).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..subjects import N_JUDGE, Subject
from ..victims.fewshot import TrainRecipe
from ..victims.fewshot_pretrain import PretrainRecipe
from ...config import ProtectionConfig
from .fewshot_scores import followup_methods
from .fewshot_tasks import (FEWSHOT_PROTECTION, METHODS, OURS, PEERS, PURIFICATIONS, ProtectJob, PurifyJob,
                            VictimJob, run_task, save_images, set_name, start_worker)

logger = logging.getLogger(__name__)

FULL_FINETUNE = TrainRecipe(steps=600, learning_rate=1e-3, batch_size=8, warmup_steps=50, cosine=True, ema=0.99)
LORA_FINETUNE = TrainRecipe(steps=1000, learning_rate=3e-3, batch_size=8, lora_rank=16, lora_targets="all")
"""LoRA on every convolution and linear layer: attention-only LoRA (diffusers' DreamBooth layers) learned
nothing of any subject on this small UNet, whose attention works only at 4x4 and 2x2 (docs/efficacy.md)."""


@dataclass(frozen=True)
class FewshotSettings:
    """What a few-shot study runs (the defaults are the full, committed study)."""

    subjects: tuple[str, ...] = ("ampersand", "hash", "percent")
    """Bundled subjects: structured (:data:`~..glyphs.STRUCTURED_SUBJECTS`, judged by shape, on the glyph
    corpus) or texture ones (``cat``, ``ihc``, ``retina``, on the photo corpus); one kind per study."""
    methods: tuple[str, ...] = METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = ("full", "lora")
    levels: int = 8
    """The budget in 8-bit levels (8 = 8/255 on [0, 1])."""
    purifications: tuple[str, ...] = PURIFICATIONS
    sweep_levels: tuple[int, ...] = (2, 4, 16)
    followup_modes: tuple[str, ...] = ("full",)
    """Fine-tuning modes of the purification and budget-sweep victims."""
    followup_sets: tuple[str, ...] = ("noise", "best", "second")
    """What the purifications and the sweep are applied to (besides the clean images): ``noise``, ``best``
    and ``second`` (the two best methods by :func:`pick`), ``ours`` (the best of ours), ``peer`` (the best
    peer)."""
    full: TrainRecipe = FULL_FINETUNE
    lora: TrainRecipe = LORA_FINETUNE
    num_samples: int = 64
    sample_steps: int = 50
    sample_eta: float = 1.0
    quality_samples: int = 128
    """Samples of the pretrained victim scored against its corpus (its sample quality)."""
    n_train: int = 12
    n_heldout: int = 24
    n_judge: int = N_JUDGE
    """Extra clean drawings of each generated subject that only the shape judge learns from (a folder
    subject has none: its judge learns from its training images)."""
    size: int = 64
    """Image side: 64 (8 x 8 TAEF2 latents) or 128 (16 x 16)."""
    judge_steps: int = 600
    """Training steps of the CNN shape judge (class-balanced batches of 64)."""
    judge_augment: str = "warp"
    """The deciding shape judge's training augmentations (:data:`~..metrics.shape_judge.JUDGE_AUGMENTS`,
    ``--judge-augment``); the other ones train the second shape judge, under which a protection must hold too
    (``strong`` also bends, re-strokes and textures the clean images)."""
    control_levels: tuple[int, ...] = (16, 32)
    """Budgets (8-bit levels) of the positive control, PhotoGuard's plainly visible push."""
    victim_check_factor: float | None = None
    """The victim check: the pretrained victim's samples' FD must be at most this many times that of a
    corpus split through its VAE (``None``: :data:`~.fewshot_scores.VICTIM_QUALITY_FACTOR`, 10). A report
    run with another factor says so in its controls table."""
    past_failed_controls: bool = False
    """Run the stages after a failed control anyway, as a labelled diagnostic: the report still opens with
    "this harness cannot see protection", gives no verdict, and says its tables describe the harness, not
    protection (what a failed control needs to be understood: which methods move what, and how far)."""
    control_seeds: int = 1
    """How many of ``seeds`` the positive and substitution controls run at (the first ones): a harness
    that cannot see a 32/255 push on one seed cannot see anything, and each seed costs 3 victims a subject."""
    pretrain: PretrainRecipe = field(default_factory=PretrainRecipe)
    shipped_pretraining: bool = True
    """Use the pretraining shipped in the package when its key is this study's (the default glyph corpus and
    recipe), instead of pretraining again (``--pretrain-from-scratch`` sets False)."""
    protection: ProtectionConfig = FEWSHOT_PROTECTION
    """The base every preset is applied over (the product's defaults)."""
    workers: int = 2
    threads: int = 1

    def recipe(self, mode: str) -> TrainRecipe:
        return {"full": self.full, "lora": self.lora}[mode]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


REDUCED = FewshotSettings(
    methods=("noise", "photoguard", "advdm", "udp"), seeds=(0,), modes=("full",), purifications=("jpeg75", "noise0.05"),
    sweep_levels=(), followup_sets=("best",), num_samples=48)
"""The default ``evaluate --regime fewshot``: one seed, noise / PhotoGuard / AdvDM / UDP, the controls,
JPEG 75 and Gaussian-noise purification of the best method. Its pretraining is the full study's (a
shorter one failed the victim check on the glyph corpus), cached and shared with ``--full``: the first
run spends most of its time there (docs/efficacy.md gives the measured stage times)."""


class TaskPool:
    """A pool of worker processes that runs lists of independent tasks (in this process for ``workers`` <= 1)."""

    def __init__(self, workers: int, threads: int, progress: bool):
        self.workers, self.threads, self.progress = workers, threads, progress
        self.executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> "TaskPool":
        if self.workers > 1:
            self.executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=start_worker, initargs=(self.threads, os.getpid()))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)

    def map(self, tasks: Sequence[tuple[str, Any]], desc: str) -> list[dict[str, Any]]:
        bar = tqdm(total=len(tasks), desc=desc, disable=not self.progress or not tasks)
        results: list[dict[str, Any]] = []
        if self.executor is None:
            for task in tasks:
                results.append(run_task(task))
                bar.update()
        else:
            futures = [self.executor.submit(run_task, task) for task in tasks]
            for future in futures:
                results.append(future.result())
                bar.update()
        bar.close()
        return results


@dataclass
class Study:
    """Paths and names of one study (everything the stages share)."""

    out: Path
    pretrained: Path
    settings: FewshotSettings
    subjects: dict[str, Subject]
    substitutes: Sequence[np.ndarray] = ()
    """Corpus images for the substitution control of a one-subject study."""
    report_dir: Path | None = None
    """Where report.md / report.json, grids and plots go (``None``: ``out``). A sweep over the attacker's
    fine-tuning rate shares one ``out`` (sets, judge, victims) and writes one report folder per rate."""

    @property
    def reports(self) -> Path:
        return self.out if self.report_dir is None else self.report_dir

    def set_key(self, subject: str) -> str:
        """What a subject's protected sets depend on: its clean images, the protection base, the surrogate."""
        from ..data import data_hash

        return short_hash([data_hash(self.subjects[subject].train), self.settings.protection.hash(),
                           self.pretrained.name])

    def substitute(self, subject: str) -> list[np.ndarray]:
        """The substitution control's training images for ``subject``: held-out images of the next
        subject of the study (or, in a one-subject study, corpus images the judges never trained on)."""
        names = list(self.subjects)
        n = len(self.subjects[subject].train)
        if len(names) > 1:
            other = self.subjects[names[(names.index(subject) + 1) % len(names)]]
            return (other.heldout * n)[:n]
        return list(self.substitutes[-n:])

    def set_path(self, subject: str, name: str, seed: int) -> Path:
        """The training set ``name`` of ``subject`` for ``seed`` (clean is the same for every seed); folder
        names carry hashes of what a file depends on, so a changed input never reuses a stale file."""
        if name == "clean":
            return self.out / "sets" / subject / f"clean-{self.set_key(subject)}.npz"
        return self.out / "sets" / subject / self.set_key(subject) / f"{name}-s{seed}.npz"

    def victim_path(self, subject: str, name: str, mode: str, seed: int) -> Path:
        """A victim's samples, under its fine-tuning and sampling recipe's hash."""
        key = short_hash([self.settings.recipe(mode).to_dict(), self.sampling()])
        return self.out / "victims" / f"{mode}-{key}" / f"{subject}-{self.set_key(subject)}" / f"{name}__s{seed}.npz"

    def never_path(self, seed: int) -> Path:
        return self.out / "victims" / f"never-shown-{short_hash(self.sampling())}" / f"s{seed}.npz"

    def sampling(self) -> list[Any]:
        s = self.settings
        return [s.num_samples, s.sample_steps, s.sample_eta, self.pretrained.name]


def short_hash(value: Any) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:8]


def protect_jobs(study: Study, methods: Sequence[str], levels: int,
                 seeds: Sequence[int] | None = None) -> list[tuple[str, ProtectJob]]:
    target = study.out / "targets" / "grey.png"
    jobs = []
    for subject in study.subjects:
        for method in methods:
            for seed in (study.settings.seeds if seeds is None else seeds):
                name = set_name(method, levels, study.settings.levels)
                out = study.set_path(subject, name, seed)
                jobs.append(("protect", ProtectJob(
                    clean=str(study.set_path(subject, "clean", seed)), method=method, levels=levels, seed=seed,
                    surrogate=str(study.pretrained / "surrogate"), target_image=str(target), out=str(out),
                    fit_dir=str(study.out / "fits" / subject / study.set_key(subject) / out.stem), pretrained=str(study.pretrained),
                    base=study.settings.protection)))
    return jobs


def victim_jobs(study: Study, names: Sequence[str], modes: Sequence[str],
                seeds: Sequence[int] | None = None) -> list[tuple[str, VictimJob]]:
    s = study.settings
    jobs = []
    for seed in (s.seeds if seeds is None else seeds):
        jobs.append(("victim", VictimJob("", s.full, seed, s.num_samples, s.sample_steps, s.sample_eta,
                                         str(study.never_path(seed)), str(study.pretrained))))
        for subject in study.subjects:
            for name in names:
                for mode in modes:
                    jobs.append(("victim", VictimJob(
                        str(study.set_path(subject, name, seed)), s.recipe(mode), seed, s.num_samples, s.sample_steps,
                        s.sample_eta, str(study.victim_path(subject, name, mode, seed)), str(study.pretrained))))
    return jobs


def purify_jobs(study: Study, names: Sequence[str]) -> list[tuple[str, PurifyJob]]:
    jobs = []
    for subject in study.subjects:
        for name in names:
            for purification in study.settings.purifications:
                for seed in study.settings.seeds:
                    jobs.append(("purify", PurifyJob(
                        str(study.set_path(subject, name, seed)), purification, seed,
                        str(study.set_path(subject, f"{name}+{purification}", seed)), str(study.pretrained))))
    return jobs


def write_inputs(study: Study) -> None:
    """The clean sets, held-out sets, substitution sets and the grey target image, as files the tasks read."""
    from PIL import Image

    for name, subject in study.subjects.items():
        save_images(study.set_path(name, "clean", 0), subject.train)
        save_images(study.out / "sets" / name / "heldout.npz", subject.heldout)
        for seed in study.settings.seeds[:study.settings.control_seeds]:
            save_images(study.set_path(name, "substitute", seed), study.substitute(name))
    target = study.out / "targets" / "grey.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    size = study.subjects[next(iter(study.subjects))].train[0].shape[0]
    Image.fromarray(np.full((size, size, 3), 128, np.uint8)).save(target)


def pick(scores: Any, methods: Sequence[str]) -> dict[str, str | None]:
    """By goal progress, mean over subjects and seeds at full fine-tuning (:meth:`Scores.goal_progress`: erasure
    first, the artifact ratio breaking ties): ``best`` and ``second`` (the two best methods, noise excluded),
    ``ours`` (the best of ours) and ``peer`` (the best peer). The follow-ups (purification, budget sweep) and the
    goal's tests run on them. The rule was fixed before any result was seen, then changed once (0.3.7), after it
    ranked artifacts equal to erasure and picked a method that erased 0.32 over one that erased 0.70."""
    progress = {m: scores.goal_progress(m, "full") for m in methods if m != "noise"}
    progress = {m: v for m, v in progress.items() if v is not None}
    ranked = sorted(progress, key=progress.get, reverse=True)
    first = lambda names: next((m for m in ranked if m in names), None)  # noqa: E731
    return {"best": ranked[0] if ranked else None, "second": ranked[1] if len(ranked) > 1 else None,
            "ours": first(OURS), "peer": first(PEERS)}


NO_PICKS: dict[str, str | None] = {"best": None, "second": None, "ours": None, "peer": None}
"""The picks of a report written before the main table (nothing picked yet)."""


def run_fewshot(out: str | Path, settings: FewshotSettings, subjects: dict[str, Subject],
                corpus: Sequence[np.ndarray], cache_dir: str | Path, progress: bool = True, judge_faces: bool = False,
                corpus_source: str | None = None, report_dir: str | Path | None = None) -> dict[str, Any]:
    """Run (or resume) the study in ``out``, its report into ``report_dir`` (default ``out``); returns the report.
    Stops after a failed gate (module docstring) with a report that says so first."""
    from .fewshot_report import write_fewshot_report
    from .fewshot_scores import Scores
    from .fewshot_setup import prepare_pretrained, prepare_classifier

    start = time.perf_counter()
    out = Path(out)
    timings: dict[str, float] = {}
    stages: dict[str, list[str]] = {"done": [], "planned": planned_stages(settings)}
    with TaskPool(settings.workers, settings.threads, progress) as pool:
        t = time.perf_counter()
        pretrained, pretrain_info = prepare_pretrained(corpus, settings, Path(cache_dir), pool, progress, corpus_source)
        timings["pretrain"] = time.perf_counter() - t
        study = Study(out, pretrained, settings, subjects, corpus[-settings.n_train:], report_dir and Path(report_dir))
        write_inputs(study)
        t = time.perf_counter()
        judge = prepare_classifier(study, corpus)
        if judge_faces:
            from ..metrics.faces import FaceJudge

            judge.faces = FaceJudge().load()
            judge.kinds = {name: "faces" for name in subjects}
        timings["classifier"] = time.perf_counter() - t

        def checkpoint(stage: str, picks: dict[str, str | None]) -> dict[str, Any]:
            """Write the report of what is done so far: a long study stopped later still has its tables
            (every stage is cached, so the same command resumes it). Fresh scores: new victims count."""
            stages["done"].append(stage)
            timings["total"] = time.perf_counter() - start
            return write_fewshot_report(study, Scores(study, judge), picks, pretrain_info, timings, stages)

        if (Scores(study, judge).controls(pretrain_info.get("quality"))["victim_learned_corpus"] is False
                and not settings.past_failed_controls):
            return checkpoint("pretrained victim check (failed: stopped)", NO_PICKS)
        t = time.perf_counter()
        control_seeds = settings.seeds[:settings.control_seeds]
        pool.map(protect_jobs(study, ["noise"], settings.levels)
                   + [job for lv in settings.control_levels
                      for job in protect_jobs(study, ["photoguard"], lv, control_seeds)], "protect (controls)")
        control_sets = [set_name("photoguard", lv, settings.levels) for lv in settings.control_levels]
        pool.map(victim_jobs(study, ["clean", "noise"], ["full"])
                   + victim_jobs(study, [*control_sets, "substitute"], ["full"], control_seeds), "victims (controls)")
        timings["controls"] = time.perf_counter() - t
        report = checkpoint("controls", NO_PICKS)
        if report["controls"]["passed"] is False and not settings.past_failed_controls:
            return report
        t = time.perf_counter()
        pool.map(protect_jobs(study, [m for m in settings.methods], settings.levels), "protect")
        timings["protect"] = time.perf_counter() - t
        t = time.perf_counter()
        main_sets = ["clean", *settings.methods]
        first, rest = mode_order(settings)
        pool.map(victim_jobs(study, main_sets, first), f"victims ({', '.join(first)})")
        timings["victims"] = time.perf_counter() - t
        picks = pick(Scores(study, judge), settings.methods)
        report = checkpoint(f"victims ({', '.join(first)})", picks)
        t = time.perf_counter()
        followups = followup_methods(settings, picks)
        if settings.purifications:
            pool.map(purify_jobs(study, ["clean", *followups]), "purify")
            purified = [f"{n}+{p}" for n in ["clean", *followups] for p in settings.purifications]
            pool.map(victim_jobs(study, purified, settings.followup_modes), "victims (purified)")
            timings["followups"] = time.perf_counter() - t
            report = checkpoint("purification", picks)
        for levels in settings.sweep_levels:
            pool.map(protect_jobs(study, followups, levels), f"protect @{levels}")
            names = [set_name(m, levels, settings.levels) for m in followups]
            pool.map(victim_jobs(study, names, settings.followup_modes), f"victims @{levels}")
            timings["followups"] = time.perf_counter() - t
            report = checkpoint(f"sweep @{levels}", picks)
        t = time.perf_counter()
        if rest:
            pool.map(victim_jobs(study, main_sets, rest), f"victims ({', '.join(rest)})")
            timings["victims"] += time.perf_counter() - t
            report = checkpoint(f"victims ({', '.join(rest)})", picks)
    return report


def mode_order(settings: FewshotSettings) -> tuple[list[str], list[str]]:
    """The fine-tuning modes of the main table first (full fine-tuning when asked for, the follow-ups
    use it), the rest after the follow-ups."""
    first = [m for m in settings.modes if m == "full"] or list(settings.modes[:1])
    return first, [m for m in settings.modes if m not in first]


def planned_stages(settings: FewshotSettings) -> list[str]:
    """The report-writing stages of a study, in the order they run."""
    first, rest = mode_order(settings)
    return (["controls", f"victims ({', '.join(first)})"] + (["purification"] if settings.purifications else [])
            + [f"sweep @{levels}" for levels in settings.sweep_levels]
            + ([f"victims ({', '.join(rest)})"] if rest else []))
