"""``udp-datasets pretrain``: a latent pair (the shipped TAEF2 encoder + a small latent UNet) trained on a
corpus of images, resumable, written as a folder that ``--surrogate OUT`` and ``load_surrogate`` read.

What it does, in order (:func:`pretrain_pair`):

1. encodes every corpus image and its mirror image with the shipped TAEF2 (raw latents);
2. standardises the latents **per channel** (each of the 32 channels by its corpus mean and std, stored
   in the VAE config as ``latents_mean`` / ``latents_std``, read back by
   :class:`~udp_datasets.models.latent.LatentNormalisation`);
3. trains a seeded ``UNet2DModel`` of :data:`~.denoiser_training.FEWSHOT_UNETS` (``fewshot-surrogate``
   by default) on them with :func:`~.denoiser_training.train_unet` (a tqdm progress bar);
4. writes the pair (``vae/``, ``unet/``, ``scheduler/``, ``model_index.json``) and ``provenance.json``
   (command, corpus count and hash, recipe, versions, timings, weights SHA-256) to ``OUT`` atomically.

Interrupted runs resume: the latents and a :class:`~.denoiser_training.TrainState` (model, optimizer,
generator, losses) live in ``OUT.partial/`` beside ``OUT``, checkpointed atomically every
``save_every`` steps; the same command run again continues from the last checkpoint and ends with the
same weights, bit for bit, as an uninterrupted run. A ``OUT.partial/`` of another corpus or recipe is
refused (start over with ``overwrite``). Corpus reading stays with the caller (the CLI), so this module
sees only uint8 arrays.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from .base import SurrogateError, weights_sha256
from .denoiser_training import (TrainRecipe, TrainState, build_unet, latent_statistics, mirrored_raw_latents,
                                normalised_latent_data, to_tensor, train_unet)

logger = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"


@dataclass(frozen=True)
class PairRecipe:
    """How the pair's UNet is trained; the defaults are the few-shot study's surrogate pretraining."""

    train: TrainRecipe = field(default_factory=lambda: TrainRecipe(
        steps=1500, learning_rate=3e-4, batch_size=32, warmup_steps=100))
    seed: int = 20
    architecture: str = "fewshot-surrogate"
    per_channel: bool = True
    """Standardise each latent channel (else one scalar shift / scale for all)."""
    half: bool = False
    """Store the UNet and VAE weights in float16 (they load back as float32 for the CPU)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def corpus_sha256(images: Sequence[np.ndarray]) -> str:
    """Content hash of a corpus (order-sensitive): each image's shape and bytes."""
    digest = hashlib.sha256()
    for a in images:
        digest.update(str(a.shape).encode())
        digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


def _atomic_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _atomic_folder(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``out``, renamed to ``out`` when the block ends without an exception
    (removed otherwise); an existing ``out`` is replaced only with ``overwrite``. The trained pair and
    the trained generator are written through it. (``models`` sits below ``sinks``, so it cannot use
    :func:`~udp_datasets.sinks.atomic.atomic_directory`.)"""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; a pair or generator is an ordinary folder
    try:
        yield tmp
        if out.exists() and overwrite:
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    sizes = {a.shape for a in images}
    if len(sizes) != 1:
        raise ValueError(f"corpus images must share one size (H, W, 3); got {sorted(sizes)[:4]}")
    (shape,) = sizes
    if len(shape) != 3 or shape[2] != 3 or shape[0] != shape[1] or shape[0] % 8:
        raise ValueError(f"corpus images must be square RGB with a side divisible by 8; got {shape}")
    return to_tensor(images)


def _prepare_work(work: Path, job: dict[str, Any], overwrite: bool) -> None:
    """``OUT.partial/``: reused when it holds this job, else refused (or cleared with ``overwrite``)."""
    record = work / "job.json"
    if work.exists():
        same = record.exists() and json.loads(record.read_text()) == job
        if not same and not overwrite:
            raise SurrogateError(f"{work} holds an interrupted pretraining of another corpus or recipe; run with "
                                 "--overwrite to start over")
        if not same:
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not record.exists():
        record.write_text(json.dumps(job, indent=2, sort_keys=True))


def check_output(out: str | os.PathLike, images: Sequence[np.ndarray], overwrite: bool) -> Path:
    """``out`` as a Path, once it is free (or ``overwrite``) and there are images to train on."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise SurrogateError(f"{out} exists; choose a new folder or pass --overwrite")
    if not images:
        raise ValueError("the corpus has no images")
    return out


class PartialRun:
    """``OUT.partial/`` of a resumable training (the pair's and the generator's): prepared for one job
    (recipe, corpus digest and count; :func:`_prepare_work`), its checkpoint ``state.pt`` read back by
    :meth:`resume` and written atomically by :meth:`save`, removed by :meth:`finish`."""

    def __init__(self, out: Path, images: Sequence[np.ndarray], recipe: dict[str, Any], overwrite: bool,
                 on_checkpoint: Callable[[int], None] | None = None):
        self.digest = corpus_sha256(images)
        self.work = out.with_name(out.name + ".partial")
        _prepare_work(self.work, {"recipe": recipe, "corpus_sha256": self.digest, "count": len(images)}, overwrite)
        self.state_path = self.work / "state.pt"
        self.on_checkpoint = on_checkpoint

    def resume(self) -> dict[str, Any] | None:
        """The last checkpoint of this job, or None (start at step 1)."""
        return torch.load(self.state_path, weights_only=True) if self.state_path.exists() else None

    def save(self, state: dict[str, Any], step: int) -> None:
        """Write the checkpoint after ``step``, then call ``on_checkpoint`` (which may stop the run)."""
        _atomic_save(state, self.state_path)
        if self.on_checkpoint is not None:
            self.on_checkpoint(step)

    def finish(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def _latents(images: Sequence[np.ndarray], work: Path, progress: bool) -> dict[str, torch.Tensor]:
    path = work / "latents.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    x = _to_tensor(images)
    start = time.perf_counter()
    if progress:
        logger.info("encoding %d images and their mirror images with TAEF2", len(images))
    raw, raw_flip = mirrored_raw_latents(x)
    state = {"raw": raw, "raw_flip": raw_flip, "seconds": torch.tensor(time.perf_counter() - start)}
    _atomic_save(state, path)
    return state


def pretrain_pair(images: Sequence[np.ndarray], out: str | os.PathLike, recipe: PairRecipe | None = None, *,
                  corpus: dict[str, Any] | None = None, command: str | None = None, save_every: int = 100,
                  overwrite: bool = False, progress: bool = True,
                  on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train the latent UNet of a pair on ``images`` ((H, W, 3) uint8, one size) and write the pair to ``out``.

    ``corpus`` describes where the images came from (recorded in ``provenance.json``); ``on_checkpoint``
    is called with the step after each checkpoint (an exception from it stops the run, resumable).
    Returns the provenance record.
    """
    recipe = recipe or PairRecipe()
    out = check_output(out, images, overwrite)
    run = PartialRun(out, images, recipe.to_dict(), overwrite, on_checkpoint)
    start = time.perf_counter()
    lat = _latents(images, run.work, progress)
    stats = latent_statistics(lat["raw"])
    vae, data = normalised_latent_data(stats, recipe.per_channel, lat["raw"], lat["raw_flip"])
    from .latent import sd_scheduler

    unet = build_unet(recipe.architecture, data.z.shape[-1], recipe.seed).requires_grad_(True)
    saved = run.resume()
    resume = TrainState.from_dict(saved) if saved is not None else None
    if resume is not None:
        logger.info("resuming the pretraining of %s after step %d", out, resume.step)
    model, losses, _ = train_unet(unet, data, recipe.train, recipe.seed, desc="pretrain" if progress else None,
                                  resume=resume, save_every=save_every,
                                  on_save=lambda state: run.save(state.to_dict(), state.step))
    record = {"command": command, "corpus": {**(corpus or {}), "count": len(images), "sha256": run.digest,
                                             "image_size": list(images[0].shape)},
              "recipe": recipe.to_dict(), "latent_statistics": stats, "final_loss": float(np.mean(losses[-100:])),
              "train_seconds_this_run": round(time.perf_counter() - start, 1), "versions": _versions()}
    _write_pair(out, vae, model, sd_scheduler(), record, recipe.half, overwrite)
    run.finish()
    return record


def _write_pair(out: Path, vae: Any, unet: Any, scheduler: Any, record: dict[str, Any], half: bool,
                overwrite: bool) -> None:
    from .latent import save_latent_pair

    with _atomic_folder(out, overwrite) as tmp:
        if half:
            vae, unet = vae.half(), unet.half()
        save_latent_pair(tmp, vae, unet, scheduler)
        record["weights_sha256"] = weights_sha256(tmp)
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2))
    logger.info("latent pair written to %s (weights sha256 %s)", out, record["weights_sha256"][:12])


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("udp-datasets", "torch", "diffusers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out
