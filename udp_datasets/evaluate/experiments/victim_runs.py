"""Clean vs protected victims, scored against held-out clean images.

The same victim recipe (architecture, seed, steps) is trained once on the clean
training images and once per protected variant (and per attack on it); each
victim's DDIM samples are compared with a held-out clean split. Protection is
real only when the protected victim's distance grows by a large factor while the
perturbation itself stays small (its PSNR / SSIM / L-inf are reported too).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..data import Images, data_hash, resize_all
from ..metrics.scorer import Scorer
from ..purify.filters import DEFAULT_ATTACKS
from ..victims.pixel import PixelRecipe, VictimConfig, final_loss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalSettings:
    victim: VictimConfig = field(default_factory=VictimConfig)
    num_samples: int = 500
    feature: str = "fitted"
    feature_kwargs: dict[str, Any] = field(default_factory=dict)
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["victim"] = self.victim.to_dict()
        return d


class VictimRecipe(Protocol):
    """How a victim is trained on images and sampled back to images (pixel or latent DDPM).

    :func:`run_victims` owns caching, scoring and reports; a recipe only says what a victim
    *is*, so a latent-diffusion victim shares all of that with the pixel one.
    """

    victim: VictimConfig

    def cache_key(self) -> dict[str, Any] | None:
        """What, beyond ``victim`` and the data, identifies a trained victim (None: nothing)."""

    def train(self, images: Images, victim_dir: Path, desc: str, progress: bool) -> list[float]:
        """Train and save into ``victim_dir`` (with ``unet/``); return the loss history."""

    def sample(self, victim_dir: Path, num_samples: int, seed: int, progress: bool) -> np.ndarray:
        """(N, H, W, C) uint8 samples at ``victim.resolution``, fixed seeds."""

    def extra_scores(self, scorer: "Scorer", images: Images, limit: int,
                     samples: np.ndarray | None = None) -> dict[str, float]:
        """Recipe-specific scores of one training set and its victim's ``samples`` (None: the
        clean reference row). Keys listed in an optional ``ratio_keys`` attribute also get
        ``KEY_ratio_vs_clean``."""


def run_victims(train_sets: dict[str, Images], holdout: Images, clean_train: Images, out_dir: str | Path,
                settings: EvalSettings, progress: bool = True,
                recipe: VictimRecipe | None = None) -> dict[str, Any]:
    """Train, sample and score one victim per training set; ``clean`` must be among them.

    ``recipe`` (default :class:`PixelRecipe` of ``settings.victim``) says what a victim is; its
    ``victim`` config must be ``settings.victim``, which the report describes.
    """
    if "clean" not in train_sets:
        raise ValueError("train_sets must contain the 'clean' baseline")
    recipe = recipe or PixelRecipe(settings.victim)
    if recipe.victim != settings.victim:
        raise ValueError("recipe.victim must be settings.victim (the report describes settings.victim)")
    out_dir = Path(out_dir)
    size = settings.victim.resolution
    holdout = resize_all(holdout, size)
    scorer = Scorer(resize_all(clean_train, size), holdout, settings)
    clean_sized = resize_all(clean_train, size)
    reference = scorer.score(clean_sized[: len(holdout)])
    reference.update(recipe.extra_scores(scorer, clean_sized, len(holdout)))
    results: dict[str, Any] = {"reference": {"clean_train_vs_holdout": reference}}
    samples: dict[str, np.ndarray] = {}
    losses: dict[str, list[float]] = {}
    for name, images in train_sets.items():
        start = time.perf_counter()
        images = resize_all(images, size)
        victim_dir = victim_folder(out_dir, name)
        key = {"victim": settings.victim.to_dict(), "data": data_hash(images), "samples": settings.num_samples,
               "seed": settings.seed}
        if recipe.cache_key() is not None:
            key["recipe"] = recipe.cache_key()
        losses_i, cached_samples = _load_cached(victim_dir, key)
        if losses_i is None:
            losses_i = recipe.train(images, victim_dir, name, progress)
        else:  # same recipe, same data: reuse the trained victim (resumable ablations)
            logger.info("victim %s: reusing the trained victim in %s", name, victim_dir)
        if cached_samples is None:
            samples[name] = recipe.sample(victim_dir, settings.num_samples, settings.seed, progress)
            np.savez_compressed(victim_dir / "samples.npz", samples=samples[name])
            (victim_dir / "cache_key.json").write_text(json.dumps(key, sort_keys=True))
        else:
            samples[name] = cached_samples
        scores = scorer.score(list(samples[name]))
        # the training images themselves, as many as samples: what a perfect victim would score
        scores["training_data_fd"] = scorer.score(images[: settings.num_samples])["fd"]
        scores.update(recipe.extra_scores(scorer, images, settings.num_samples, samples[name]))
        scores["final_train_loss"] = final_loss(losses_i)
        scores["seconds"] = round(time.perf_counter() - start, 1)
        results[name] = scores
        losses[name] = losses_i
        logger.info("victim %-24s FD %.3f precision %.3f recall %.3f", name, scores["fd"],
                    scores["precision"], scores["recall"])
    base = results["clean"]["fd"]
    for name in train_sets:
        results[name]["fd_ratio_vs_clean"] = results[name]["fd"] / base if base > 0 else math.inf
        for key in getattr(recipe, "ratio_keys", ()):  # the recipe's own distances, relative to clean too
            clean_value = results["clean"].get(key)
            if key in results[name] and clean_value:
                results[name][f"{key}_ratio_vs_clean"] = results[name][key] / clean_value
    return {"victims": results, "samples": samples, "losses": losses}


SAMPLING_FIELDS = ("sample_steps", "sample_eta")


def _load_cached(victim_dir: Path, key: dict[str, Any]) -> tuple[list[float] | None, np.ndarray | None]:
    """(loss history if the trained victim can be reused, samples if they can be too)."""
    key_file, samples_file = victim_dir / "cache_key.json", victim_dir / "samples.npz"
    log_file = victim_dir / "victim_training.json"
    if not (key_file.exists() and log_file.exists() and (victim_dir / "unet").is_dir()):
        return None, None
    stored = json.loads(key_file.read_text())
    key = json.loads(json.dumps(key, sort_keys=True))

    def training(k: dict[str, Any]) -> dict[str, Any]:
        return {f: v for f, v in k["victim"].items() if f not in SAMPLING_FIELDS}

    if stored.get("data") != key["data"] or training(stored) != training(key) \
            or stored.get("recipe") != key.get("recipe"):
        return None, None
    losses = json.loads(log_file.read_text())["loss_history"]
    same_sampling = stored == key and samples_file.exists()
    return losses, (np.load(samples_file)["samples"] if same_sampling else None)


def victim_folder(out_dir: str | Path, name: str) -> Path:
    """Where :func:`run_victims` keeps the victim of training set ``name`` (its weights, samples, cache key)."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return Path(out_dir) / "victims" / slug
