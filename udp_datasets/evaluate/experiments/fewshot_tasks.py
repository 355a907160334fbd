"""The few-shot study's units of work: protect a subject's set, purify a set, fine-tune and sample a victim.

Each task reads its inputs from files, writes its output file atomically and returns a small
record, so the driver (:mod:`.fewshot`) can run tasks in worker processes, in any order within a
stage, and resume an interrupted study: a task whose output exists returns its record at once.
Protection goes through the product: :class:`~udp_datasets.Protector` with the named presets of
:mod:`udp_datasets.method.presets` against the study's pretrained latent surrogate pair.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...config import ProtectionConfig
from ..metrics.fidelity import linf_levels, psnr
from ..metrics.arrays import hwc_to_nchw
from ..victims.fewshot import TrainRecipe, decode, encode, finetune, latent_data, sample

logger = logging.getLogger(__name__)

OURS = ("udp", "eudp")
PEERS = ("advdm", "photoguard", "photoguard_target", "mist", "mist2", "sds", "aspl", "metacloak")
METHODS = ("noise", *PEERS, *OURS)
"""Every protection of the study; ``noise`` is random +-epsilon on every pixel (the baseline)."""
FITTED = ("aspl", "metacloak", "udp", "eudp")
"""Presets whose surrogate ``Protector.fit`` first trains on the subject's images."""
PURIFICATIONS = ("jpeg75", "noise0.05", "diffpure", "impress")
"""The purifications by name; ``diffpureT`` is DiffPure from t* = T (1-999) instead of the default 300."""
DIFFPURE_AT = re.compile(r"diffpure([1-9]\d{0,2})")


def is_purification(name: str) -> bool:
    """A known purification: one of :data:`PURIFICATIONS`, or ``diffpureT``. Why a T: DiffPure at t* = 300 drowns a
    1-2 px grey stroke, so on thin shapes it purifies the subject out of the clean images as well and nothing
    can be measured against them; a gentler t* keeps the subject."""
    return name in PURIFICATIONS or DIFFPURE_AT.fullmatch(name) is not None


FEWSHOT_PROTECTION = ProtectionConfig(batch_size=16)
"""The study's protection base: the product's defaults (40 PGD steps of epsilon / 8, fit 10 rounds of
40 surrogate steps and 10 PGD steps); each preset sets its own fields over it."""


def set_name(method: str, levels: int, study_levels: int) -> str:
    """A protected set's name: ``udp`` at the study's budget, ``udp@4`` at another."""
    return method if levels == study_levels else f"{method}@{levels}"


PARENT_POLL_SECONDS = 0.5
"""How often a worker checks that the study that started it still runs."""


def start_worker(threads: int, parent_pid: int) -> None:
    """Worker initialiser: intra-op threads per process (1 per worker on a shared 2-core machine), and a
    watchdog that ends the worker once its parent is gone.

    Why the watchdog: a parent killed by SIGTERM or SIGKILL (a service manager, ``kill``, the OOM killer)
    runs no clean-up, and ``ProcessPoolExecutor``'s workers would go on fine-tuning for minutes as
    orphans, holding the cores the next run needs. A worker's outputs are written atomically, so ending
    it mid-task loses only that task, which a resumed study runs again."""
    import threading

    torch.set_num_threads(max(1, threads))

    def exit_when_orphaned() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_SECONDS)
        logger.warning("the study's process %d is gone: worker %d stops", parent_pid, os.getpid())
        os._exit(1)

    threading.Thread(target=exit_when_orphaned, name="parent-watchdog", daemon=True).start()


def save_images(path: Path, images: list[np.ndarray] | np.ndarray, **extra: Any) -> None:
    """Write (N, H, W, 3) uint8 images (and small arrays) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, images=np.stack(list(images)), **extra)
    os.replace(tmp, path)


def load_images(path: Path) -> list[np.ndarray]:
    with np.load(path) as data:
        return list(data["images"])


def write_json(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}-{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    return record


@lru_cache(maxsize=2)
def victim_codec(pretrained: str):
    """The pretrained victim's TAEF2 (normalisation in its config), loaded once per process."""
    from ...models.tiny_autoencoder import load_autoencoder

    return load_autoencoder(Path(pretrained) / "victim" / "vae").requires_grad_(False)


@lru_cache(maxsize=2)
def victim_base(pretrained: str):
    from ..victims.fewshot_pretrain import load_victim_unet

    return load_victim_unet(Path(pretrained))


def parse_method(method: str) -> tuple[str, dict[str, Any]]:
    """A study method: a preset name, optionally with config fields over it, ``PRESET:field=value:...``
    (``advdm:timesteps=eudp`` is AdvDM's max side with EUDP's timesteps, ``photoguard:engine=generator``
    PhotoGuard through the generator engine): variants measured beside the presets, through the same
    product config, so that a table row says exactly what it ran. A field whose config value is a comma list
    (:data:`PLUS_LIST_FIELDS`) joins its items with ``+`` here, since ``,`` separates the methods of
    ``--methods``: ``photoguard:eot=noise+jpeg`` is ``eot="noise,jpeg"``."""
    preset, *fields = method.split(":")
    overrides: dict[str, Any] = {}
    for field_spec in fields:
        key, sep, raw = field_spec.partition("=")
        if not sep or not key:
            raise ValueError(f"method {method!r}: each field after the preset is field=value")
        overrides[key] = raw.replace("+", ",") if key in PLUS_LIST_FIELDS else _field_value(raw)
    return preset, overrides


PLUS_LIST_FIELDS = ("eot",)
"""Config fields spelled as a comma list (``eot="noise,jpeg"``), written ``+``-joined in a method spec."""


def _field_value(raw: str) -> Any:
    """A field's value as a config file spells it (JSON: ``100``, ``0.5``, ``true``), else the bare string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def training_set(name: str) -> str:
    """The protected training set a set name comes from: ``udp+jpeg75`` -> ``udp`` (a purified copy);
    a variant's own ``+`` (``engine=generator+pgd``) is not a purification."""
    base, sep, last = name.rpartition("+")
    return base if sep and is_purification(last) else name


def method_config(method: str, surrogate: str, levels: int, seed: int, target_image: str,
                  base: ProtectionConfig = FEWSHOT_PROTECTION) -> ProtectionConfig:
    """The product's config of a study method: its preset (and fields, :func:`parse_method`) over ``base``
    at ``levels`` / 255.

    ``photoguard_target`` is PhotoGuard's encoder attack toward a target image's latent (a flat grey
    image, as in the paper): the ``photoguard`` preset with ``encoder_target='pattern'``.
    """
    from ...method.presets import preset_config

    preset, overrides = parse_method(method)
    if preset == "photoguard_target":
        preset, overrides = "photoguard", {"encoder_target": "pattern", "target_image": target_image, **overrides}
    return preset_config(preset, base=base, surrogate=surrogate, epsilon=levels / 255, seed=seed, **overrides)


@dataclass(frozen=True)
class ProtectJob:
    clean: str
    """.npz of the subject's clean training images."""
    method: str
    levels: int
    seed: int
    surrogate: str
    target_image: str
    out: str
    fit_dir: str
    pretrained: str
    base: ProtectionConfig = FEWSHOT_PROTECTION


def cached_info(out: Path) -> dict[str, Any] | None:
    """The info record of a task whose images ``out`` and record (``out`` as .json) are both saved."""
    info_path = out.with_suffix(".json")
    return json.loads(info_path.read_text()) if out.exists() and info_path.exists() else None


def save_result(out: Path, images: Any, info: dict[str, Any]) -> dict[str, Any]:
    """Images first, then the record: a task counts as done (:func:`cached_info`) only when both are."""
    save_images(out, images)
    return write_json(out.with_suffix(".json"), info)


def protect_task(job: ProtectJob) -> dict[str, Any]:
    """Protect one subject's training set with one method (``noise``: random +-epsilon); cached."""
    from .protected_sets import protect_arrays, random_noise

    out = Path(job.out)
    if (done := cached_info(out)) is not None:
        return done
    clean = load_images(Path(job.clean))
    start = time.perf_counter()
    if job.method == "noise":
        protected = random_noise(clean, job.levels, seed=job.seed, sign=True)
        config: dict[str, Any] = {}
    else:
        cfg = method_config(job.method, job.surrogate, job.levels, job.seed, job.target_image, job.base)
        fitted = parse_method(job.method)[0] in FITTED
        protected = protect_arrays(clean, cfg, Path(job.fit_dir), progress=False, fit=fitted)
        config = cfg.to_dict()
    seconds = time.perf_counter() - start
    a, b = hwc_to_nchw(clean), hwc_to_nchw(protected)
    vae = victim_codec(job.pretrained)
    z_clean, z_prot = encode(vae, a), encode(vae, b)
    info = {"method": job.method, "levels": job.levels, "seed": job.seed, "seconds": seconds,
            "psnr_db": psnr(b, a), "linf_levels": linf_levels(b, a),
            "latent_shift": float((z_prot - z_clean).norm() / z_clean.norm()), "config": config}
    return save_result(out, protected, info)


@dataclass(frozen=True)
class PurifyJob:
    source: str
    purification: str
    seed: int
    out: str
    pretrained: str


def purify_task(job: PurifyJob) -> dict[str, Any]:
    """Apply one purification to a set (protected or clean); cached."""
    from ..purify.diffpure import diffpure
    from ..purify.filters import ATTACKS
    from ..purify.impress import impress
    from ..victims.fewshot_pretrain import load_pair

    out = Path(job.out)
    if out.exists():
        return {"out": job.out}
    images = load_images(Path(job.source))
    start = time.perf_counter()
    if job.purification in ATTACKS:
        purified = [ATTACKS[job.purification](a) for a in images]
    elif job.purification == "diffpure" or DIFFPURE_AT.fullmatch(job.purification):
        at = DIFFPURE_AT.fullmatch(job.purification)
        purified = diffpure(images, load_pair(Path(job.pretrained), "victim"), seed=job.seed,
                            **({"t_star": int(at.group(1))} if at else {}))
    elif job.purification == "impress":
        purified = impress(images, victim_codec(job.pretrained))
    else:
        raise ValueError(f"unknown purification {job.purification!r}; choose from {PURIFICATIONS} or diffpureT")
    save_images(out, purified, seconds=np.array(time.perf_counter() - start),
                psnr_db=np.array(psnr(hwc_to_nchw(purified), hwc_to_nchw(images))))
    return {"out": job.out}


@dataclass(frozen=True)
class VictimJob:
    images: str
    """.npz of the training set ('' for the never-shown model: the pretrained victim sampled as is)."""
    recipe: TrainRecipe
    seed: int
    num_samples: int
    sample_steps: int
    sample_eta: float
    out: str
    pretrained: str


def victim_task(job: VictimJob) -> dict[str, Any]:
    """Fine-tune the pretrained victim on a set (full or LoRA, per the recipe) and sample it; cached.

    Samples use the seed's fixed noise, so victims of one seed differ only by their training data.
    """
    out = Path(job.out)
    if (done := cached_info(out)) is not None:
        return done
    vae, base = victim_codec(job.pretrained), victim_base(job.pretrained)
    start = time.perf_counter()
    if job.images:
        model, losses = finetune(base, latent_data(vae, load_images(Path(job.images))), job.recipe, job.seed)
    else:
        model, losses = base, []
    trained = time.perf_counter() - start
    samples = decode(vae, sample(model, job.num_samples, job.seed, job.sample_steps, job.sample_eta))
    info = {"recipe": asdict(job.recipe), "seed": job.seed, "train_seconds": trained,
            "sample_seconds": time.perf_counter() - start - trained,
            "final_loss": float(np.mean(losses[-50:])) if losses else None, "loss_history": losses[::10]}
    return save_result(out, samples, info)


@dataclass(frozen=True)
class PretrainJob:
    folder: str
    kind: str
    """``victim`` or ``surrogate``."""
    recipe: Any
    """A :class:`~..victims.fewshot_pretrain.PretrainRecipe`."""


def pretrain_task(job: PretrainJob) -> dict[str, Any]:
    from ..victims.fewshot_pretrain import pretrain_unet

    return pretrain_unet(job.kind, Path(job.folder), job.recipe, progress=False)


def run_task(task: tuple[str, Any]) -> dict[str, Any]:
    """Dispatch ``(kind, job)``: the one entry point worker processes call."""
    kind, job = task
    return {"pretrain": pretrain_task, "protect": protect_task, "purify": purify_task, "victim": victim_task}[kind](job)
