"""Pair fidelity: how visible the protection itself is (protected vs clean image).

:func:`psnr`, :func:`psnr_per_image`, :func:`ssim`, :func:`ssim_per_image`, :func:`linf_levels`, and
:func:`perturbation_cost` (all three for a protected set); images as in :mod:`.arrays`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .arrays import ImageBatch, hwc_to_nchw, image_pair, pixel_chunks


def psnr_per_image(a: ImageBatch, b: ImageBatch, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB of each image pair, ``10 log10(data_range^2 / MSE)``; ``inf`` where identical."""
    ta, tb = image_pair(a, b)
    mse = (ta - tb).square().flatten(1).mean(dim=1).numpy()
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range ** 2 / mse)


def psnr(a: ImageBatch, b: ImageBatch, data_range: float = 1.0) -> float:
    """Mean of the per-image PSNRs (dB), the usual way a dataset's perturbation is reported.

    Averaging dB (not pooling the MSE) weights every image equally; ``inf`` if any pair is
    identical.
    """
    return float(np.mean(psnr_per_image(a, b, data_range)))


def _gaussian_window(sigma: float, truncate: float) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)  # as scipy.ndimage / skimage
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _symmetric_index(n: int, radius: int) -> torch.Tensor:
    """Indices of scipy.ndimage's 'reflect' padding (d c b a | a b c d | d c b a), any n."""
    idx = torch.arange(-radius, n + radius) % (2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def _gaussian_filter(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, H, W) with ndimage 'reflect' borders."""
    r = window.shape[0] // 2
    h, w = x.shape[-2:]
    x = x.index_select(-2, _symmetric_index(h, r)).index_select(-1, _symmetric_index(w, r))
    x = F.conv2d(x, window.view(1, 1, -1, 1))
    return F.conv2d(x, window.view(1, 1, 1, -1))


def ssim_per_image(a: ImageBatch, b: ImageBatch, data_range: float = 1.0, sigma: float = 1.5,
                   k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """SSIM of each image pair (Wang et al. 2004), averaged over channels.

    Gaussian-weighted 11x11 window (sigma 1.5, truncate 3.5), population covariances, scipy
    'reflect' borders and a crop of the window radius before averaging: the same numbers as
    ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=0)``, computed in float64 torch so
    a whole batch goes at once.
    """
    ta, tb = image_pair(a, b)
    n, c, h, w = ta.shape
    window = _gaussian_window(sigma, truncate=3.5)
    r = window.shape[0] // 2
    if h < window.shape[0] or w < window.shape[0]:
        raise ValueError(f"SSIM needs images of at least {window.shape[0]}x{window.shape[0]}, got {h}x{w}")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    out = []
    for sl in pixel_chunks(n, 5 * c * h * w):
        x = ta[sl].reshape(-1, 1, h, w)
        y = tb[sl].reshape(-1, 1, h, w)
        stacked = torch.cat([x, y, x * x, y * y, x * y])
        ux, uy, uxx, uyy, uxy = _gaussian_filter(stacked, window).chunk(5)
        vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        s = s[..., r:h - r, r:w - r]
        out.append(s.reshape(-1, c, (h - 2 * r) * (w - 2 * r)).mean(dim=2).mean(dim=1))
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
