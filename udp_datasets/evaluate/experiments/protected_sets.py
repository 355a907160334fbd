"""Protected training sets: protect arrays with a config, cache the result, and the random-noise control.

The ablations protect the same images with many configs; each protected set is computed once
per (name, config hash[, salt]) and kept under ``out/protected/`` as ``.npz``, so an
interrupted study resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ...config import ProtectionConfig
from ...images import ImageError

logger = logging.getLogger(__name__)


def protect_arrays(images: Sequence[np.ndarray], config: ProtectionConfig, fit_dir: Path,
                   progress: bool = True, fit: bool | None = None) -> list[np.ndarray]:
    """Fit (if needed) and protect a list of arrays; refuses to return partial results.

    ``fit`` None: fits the built-in surrogate when none is given, and fine-tunes a copy of a given
    *latent* surrogate for ``unlearnable`` (min-min needs a denoiser co-trained on the perturbed
    data; a pretrained latent pair is only its starting point). ``fit`` True / False forces it
    (the presets that train their surrogate on the images: aspl, metacloak, udp, eudp). The fitted
    copy goes to ``fit_dir``.
    """
    from ...images import FailedImage, decode_png_pixels
    from ...models import is_latent_folder
    from ...protector import Protector

    protector = Protector(config, progress=progress)
    if fit is None:
        fit = config.surrogate is None or (config.objective == "unlearnable" and is_latent_folder(config.surrogate))
    if fit:
        protector.fit(list(images), output_dir=fit_dir)
    results = protector.protect_images(list(images))
    failed = [r for r in results if isinstance(r, FailedImage)]
    if failed:
        raise ImageError(f"{len(failed)} images could not be protected, e.g. {failed[0].key}: {failed[0].reason}")
    return [decode_png_pixels(r.png) for r in results]


def random_noise(images: list[np.ndarray], levels: int, seed: int = 0, sign: bool = False) -> list[np.ndarray]:
    """The 'no optimisation' control of equal budget: uniform integer noise in [-levels, levels], or with
    ``sign`` random +-levels on every pixel (the largest perturbation the budget allows, as PGD's sign
    steps end up: the baseline of the few-shot study)."""
    rng = np.random.default_rng(seed)
    if sign:
        return [np.clip(a.astype(np.int16) + levels * (2 * rng.integers(0, 2, a.shape) - 1), 0, 255).astype(np.uint8)
                for a in images]
    return [np.clip(a.astype(np.int16) + rng.integers(-levels, levels + 1, a.shape), 0, 255).astype(np.uint8)
            for a in images]


def cached_protect(name: str, images: list[np.ndarray], config: ProtectionConfig, out: Path,
                   salt: str = "") -> list[np.ndarray]:
    """Protect (and fit, if the recipe needs it) once; ``salt`` ties the cache to e.g. surrogate weights."""
    cache = out / "protected" / f"{name.replace('/', '_')}-{config.hash()}{'-' + salt if salt else ''}.npz"
    if cache.exists():
        return list(np.load(cache)["images"])
    start = time.perf_counter()
    protected = protect_arrays(images, config, out / "surrogates" / config.hash(), progress=True)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, images=np.stack(protected))
    logger.info("protected %s in %.0f s", name, time.perf_counter() - start)
    return protected
