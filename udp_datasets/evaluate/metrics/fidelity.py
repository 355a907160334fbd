"""Pair fidelity: how visible the protection itself is (protected vs clean image).

PSNR and SSIM are torchmetrics' (``torchmetrics.functional``, the ``eval`` extra), wrapped so that
they take the metrics' image batches (:mod:`.arrays`) and return one number per image pair.

:func:`psnr`, :func:`psnr_per_image`, :func:`ssim`, :func:`ssim_per_image`, :func:`linf_levels`, and
:func:`perturbation_cost` (all three for a protected set); images as in :mod:`.arrays`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .arrays import ImageBatch, hwc_to_nchw, image_pair, pixel_chunks


def psnr_per_image(a: ImageBatch, b: ImageBatch, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB of each image pair, ``10 log10(data_range^2 / MSE)``; ``inf`` where identical.

    torchmetrics' ``peak_signal_noise_ratio`` per image (``dim=(1, 2, 3)``, no reduction) in float64;
    its factor 10 / ln(10) is a float32, so it agrees with ``10 * log10`` in float64 to ~2e-6 dB.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    ta, tb = image_pair(a, b)
    return peak_signal_noise_ratio(ta, tb, data_range=data_range, reduction="none", dim=(1, 2, 3)).numpy()


def psnr(a: ImageBatch, b: ImageBatch, data_range: float = 1.0) -> float:
    """Mean of the per-image PSNRs (dB), the usual way a dataset's perturbation is reported.

    Averaging dB (not pooling the MSE) weights every image equally; ``inf`` if any pair is
    identical.
    """
    return float(np.mean(psnr_per_image(a, b, data_range)))


def ssim_per_image(a: ImageBatch, b: ImageBatch, data_range: float = 1.0, sigma: float = 1.5,
                   k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """SSIM of each image pair (Wang et al. 2004), averaged over channels.

    The SSIM map is torchmetrics' (``structural_similarity_index_measure``, float64): a
    Gaussian-weighted 11x11 window (sigma 1.5, truncated at 3.5 sigma) and population covariances.
    It is averaged, as skimage does, only over the pixels whose window lies inside the image (a
    border of the window radius is cropped): the numbers of
    ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=0)``, which every committed report used.
    torchmetrics' own mean (1.x) keeps that border, filled by reflect padding; on 16-64 px images
    that moves SSIM by up to ~4e-3, so its map is cropped here instead.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    ta, tb = image_pair(a, b)
    n, c, h, w = ta.shape
    r = int(3.5 * sigma + 0.5)
    size = 2 * r + 1
    if h < size or w < size:
        raise ValueError(f"SSIM needs images of at least {size}x{size}, got {h}x{w}")
    out = []
    for sl in pixel_chunks(n, 5 * c * h * w):
        _, full = structural_similarity_index_measure(ta[sl], tb[sl], gaussian_kernel=True, sigma=sigma,
                                                      kernel_size=size, data_range=data_range, k1=k1, k2=k2,
                                                      reduction="none", return_full_image=True)
        out.append(full[..., r:h - r, r:w - r].flatten(1).mean(dim=1))
    return torch.cat(out).numpy()


def ssim(a: ImageBatch, b: ImageBatch, data_range: float = 1.0) -> float:
    """Mean :func:`ssim_per_image` over the batch."""
    return float(np.mean(ssim_per_image(a, b, data_range)))


def linf_levels(a: ImageBatch, b: ImageBatch) -> int:
    """Largest absolute pixel difference over the whole batch, in rounded 0-255 levels.

    This is the number a protection budget such as ``epsilon = 8/255`` promises; rounding
    absorbs float round-off so that an 8-level perturbation reads 8, not 7.9999.
    """
    ta, tb = image_pair(a, b)
    return int(round(float((ta - tb).abs().max()) * 255.0))


def perturbation_cost(clean: Sequence[np.ndarray], protected: Sequence[np.ndarray]) -> dict[str, float]:
    """PSNR / SSIM / max L-inf of protected vs clean (H, W, C) uint8 images, paired by position."""
    if len(clean) != len(protected):
        raise ValueError(f"clean and protected sets differ in size ({len(clean)} vs {len(protected)})")
    a, b = hwc_to_nchw(clean).numpy(), hwc_to_nchw(protected).numpy()
    return {"psnr_db": float(psnr(a, b)), "ssim": float(ssim(a, b)), "linf_levels": int(linf_levels(a, b))}
