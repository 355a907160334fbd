"""``udp-datasets evaluate``: one call from datasets (or the bundled data) to a report.

With ``--clean`` and ``--protected`` it evaluates a user's own pair of datasets
(paired by position, as ``protect`` keeps the order). Without them it uses the
bundled photo patches, protects them with the given config first, and so measures
the whole method end to end on data anyone can reproduce offline.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..config import ProtectionConfig
from ..images import ImageError, load_image
from .experiment import EvalSettings, perturbation_cost, resize_all, run_victims, with_attacks
from .report import write_report

logger = logging.getLogger(__name__)


def load_images(src: str, image_column: str = "image", limit: int | None = None) -> list[np.ndarray]:
    """Decode a dataset's images to (H, W, C) uint8 arrays (alpha dropped)."""
    from ..protector import raw_image_column
    from ..sources import open_source

    ds = open_source(src)  # also understands the output folder of `udp-datasets protect`
    ds = raw_image_column(ds, image_column)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    out = []
    for i, value in enumerate(ds[image_column]):
        try:
            out.append(load_image(value, key=str(i)).pixels)
        except ImageError as exc:
            raise ImageError(f"{src}: {exc}") from exc
    return out


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction {fraction} must be in (0, 1)")
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def protect_arrays(images: Sequence[np.ndarray], config: ProtectionConfig, fit_dir: Path,
                   progress: bool = True) -> list[np.ndarray]:
    """Fit (if needed) and protect a list of arrays; refuses to return partial results.

    Fits the built-in surrogate when none is given, and fine-tunes a copy of a given *latent*
    surrogate for ``unlearnable`` (min-min needs a denoiser co-trained on the perturbed data;
    a pretrained latent pair is only its starting point). The fitted copy goes to ``fit_dir``.
    """
    from ..images import decode_png_pixels
    from ..protector import FailedImage, Protector
    from ..models import is_latent_folder

    protector = Protector(config, progress=progress)
    if config.surrogate is None or (config.objective == "unlearnable" and is_latent_folder(config.surrogate)):
        protector.fit(list(images), output_dir=fit_dir)
    results = protector.protect_images(list(images))
    failed = [r for r in results if isinstance(r, FailedImage)]
    if failed:
        raise ImageError(f"{len(failed)} images could not be protected, e.g. {failed[0].key}: {failed[0].reason}")
    return [decode_png_pixels(r.png) for r in results]


def evaluate_pair(clean: Sequence[np.ndarray], protected: Sequence[np.ndarray], out_dir: str | Path,
                  settings: EvalSettings, holdout_fraction: float = 0.25, label: str = "protected",
                  extra: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Victims on clean vs protected (+ attacks), scored on a held-out clean split; writes the report."""
    import platform

    from ..jobs.dataset_job import library_versions

    if len(clean) != len(protected):
        raise ValueError(f"--clean has {len(clean)} images but --protected has {len(protected)}; they must "
                         "be the same images in the same order (quarantined samples removed from both)")
    start = time.perf_counter()
    train_idx, hold_idx = split_holdout(len(clean), holdout_fraction, settings.seed)
    clean_train = [clean[i] for i in train_idx]
    prot_train = [protected[i] for i in train_idx]
    holdout = [clean[i] for i in hold_idx]
    cost = {label: perturbation_cost(clean_train, prot_train)}
    sets = {"clean": clean_train, **with_attacks({label: prot_train}, settings.attacks)}
    out = run_victims(sets, holdout, clean_train, out_dir, settings, progress=progress)
    report = {
        "settings": settings.to_dict(),
        "data": {"train": len(train_idx), "holdout": len(hold_idx), "holdout_fraction": holdout_fraction},
        "perturbation": cost, "victims": out["victims"], "seconds": round(time.perf_counter() - start, 1),
        "versions": {**library_versions(), "python": platform.python_version()}, **(extra or {}),
    }
    size = settings.victim.resolution
    write_report(report, out["samples"], out["losses"], np.stack(resize_all(holdout, size)), out_dir)
    return report


def evaluate_bundled(config: ProtectionConfig, out_dir: str | Path, settings: EvalSettings,
                     count: int = 1200, size: int = 16, holdout_fraction: float = 0.25,
                     progress: bool = True) -> dict[str, Any]:
    """Protect the bundled photo patches with ``config`` and evaluate them."""
    from ..sources.bundled import photo_patches

    out_dir = Path(out_dir)
    clean = photo_patches(size, count, seed=settings.seed)
    start = time.perf_counter()
    protected = protect_arrays(clean, config, out_dir / "surrogate", progress=progress)
    seconds = time.perf_counter() - start
    return evaluate_pair(clean, protected, out_dir, settings, holdout_fraction, extra={
        "protection": {"config": config.to_dict(), "config_hash": config.hash(), "seconds": round(seconds, 1),
                       "data": f"bundled photo patches, {count} x {size}px (scikit-image photographs)"}},
        progress=progress)
