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

from ...config import ProtectionConfig
from ..data import resize_all, split_holdout
from ..metrics.fidelity import perturbation_cost
from ..purify.filters import with_attacks
from ..report import card_markdown, run_versions, write_report
from .protected_sets import protect_arrays
from .victim_runs import EvalSettings, run_victims

logger = logging.getLogger(__name__)


def evaluate_pair(clean: Sequence[np.ndarray], protected: Sequence[np.ndarray], out_dir: str | Path,
                  settings: EvalSettings, holdout_fraction: float = 0.25, label: str = "protected",
                  extra: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Victims on clean vs protected (+ attacks), scored on a held-out clean split; writes the report."""
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
        "versions": run_versions(), **(extra or {}),
    }
    report["card_markdown"] = card_markdown(report)
    size = settings.victim.resolution
    write_report(report, out["samples"], out["losses"], np.stack(resize_all(holdout, size)), out_dir)
    return report


def evaluate_bundled(config: ProtectionConfig, out_dir: str | Path, settings: EvalSettings,
                     count: int = 1200, size: int = 16, holdout_fraction: float = 0.25,
                     progress: bool = True) -> dict[str, Any]:
    """Protect the bundled photo patches with ``config`` and evaluate them."""
    from ...sources.bundled import photo_patches

    out_dir = Path(out_dir)
    clean = photo_patches(size, count, seed=settings.seed)
    start = time.perf_counter()
    protected = protect_arrays(clean, config, out_dir / "surrogate", progress=progress)
    seconds = time.perf_counter() - start
    return evaluate_pair(clean, protected, out_dir, settings, holdout_fraction, extra={
        "protection": {"config": config.to_dict(), "config_hash": config.hash(), "seconds": round(seconds, 1),
                       "data": f"bundled photo patches, {count} x {size}px (scikit-image photographs)"}},
        progress=progress)
