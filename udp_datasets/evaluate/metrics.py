"""Metrics for the efficacy evaluation: pure functions, no state (a "functional twin").

The evaluation trains victim diffusion models on clean and on protected data and compares
what they generate with held-out clean images. Each family of metrics answers one question:

* distribution distance — :func:`frechet_distance` / :func:`frechet_distance_from_features`
  (FID when the features come from Inception) and :func:`precision_recall`
  (Kynkäänniemi et al. 2019): did the victim learn the clean distribution?
* artefacts — :func:`high_frequency_energy`, :func:`artifact_ratio`, :func:`colour_noise`,
  :func:`colour_noise_ratio`: protections that "work" by making samples noisy or textured
  show up here even when a feature-space distance is ambiguous.
* pair fidelity — :func:`psnr`, :func:`psnr_per_image`, :func:`ssim`, :func:`ssim_per_image`,
  :func:`linf_levels`: how visible the protection itself is (protected vs clean image).

Image convention, everywhere in this module: a float ``torch.Tensor`` **or** ``numpy.ndarray``
in [0, 1], channel-first, shape ``(N, C, H, W)``; a single ``(C, H, W)`` image counts as
``N = 1`` and ``uint8`` input is divided by 255. Channel-last data (what PIL and
:mod:`udp_datasets.bundled` give) goes through :func:`hwc_to_nchw` first; nothing here guesses
the layout. Values outside [0, 1] (e.g. a model's [-1, 1] output) are refused, because every
metric below would silently change meaning.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ImageBatch = Union[torch.Tensor, np.ndarray]
Features = Union[torch.Tensor, np.ndarray]

_RANGE_TOLERANCE = 1e-4
# Pixels per chunk for the per-image metrics: bounds memory on large (e.g. 512 px) batches.
_CHUNK_PIXELS = 1 << 22

__all__ = [
    "ImageBatch", "Features", "hwc_to_nchw",
    "frechet_distance", "frechet_distance_from_features", "feature_statistics", "precision_recall",
    "high_frequency_energy", "radial_frequency", "artifact_ratio", "colour_noise", "colour_noise_ratio",
    "psnr", "psnr_per_image", "ssim", "ssim_per_image", "linf_levels",
]


# --------------------------------------------------------------------------- inputs

def hwc_to_nchw(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """Stack channel-last images (``(H, W)``, ``(H, W, C)`` or ``(N, H, W, C)``; uint8 or float
    in [0, 1]) into a float32 ``(N, C, H, W)`` tensor in [0, 1].

    The explicit converter exists so that the metrics never have to guess a layout.
    """
    arrays = list(images)
    if not arrays:
        raise ValueError("no images given")
    out = []
    for a in arrays:
        a = np.asarray(a)
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3:
            raise ValueError(f"expected (H, W) or (H, W, C) images, got shape {a.shape}")
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
        t = t.float() / 255.0 if a.dtype == np.uint8 else t.float()
        out.append(t)
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) != 1:
        raise ValueError(f"images have different shapes {sorted(shapes)}; resize them first")
    return torch.stack(out)


def _as_images(x: ImageBatch, name: str = "images", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(N, C, H, W) float tensor in [0, 1] on the CPU, or a clear error."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        raise TypeError(f"{name}: expected a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if t.dtype == torch.uint8:
        t = t.to(dtype) / 255.0
    elif not t.is_floating_point():
        raise TypeError(f"{name}: expected float in [0, 1] or uint8, got {t.dtype}")
    else:
        t = t.to(dtype)
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4:
        raise ValueError(f"{name}: expected (N, C, H, W) or (C, H, W), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name}: empty batch {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if lo < -_RANGE_TOLERANCE or hi > 1 + _RANGE_TOLERANCE:
        raise ValueError(
            f"{name}: values span [{lo:.4g}, {hi:.4g}] but [0, 1] is expected "
            "(for a model's [-1, 1] output use (x + 1) / 2)")
    return t


def _pair(a: ImageBatch, b: ImageBatch, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    ta, tb = _as_images(a, "a", dtype), _as_images(b, "b", dtype)
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    return ta, tb


def _as_features(f: Features, name: str) -> np.ndarray:
    arr = f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected (N, D) features, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def _chunks(n: int, per_item: int) -> list[slice]:
    step = max(1, _CHUNK_PIXELS // max(per_item, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# --------------------------------------------------------------------------- Fréchet distance

def feature_statistics(features: Features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N - 1) covariance of ``(N, D)`` features, in float64.

    Kept separate so that reference statistics (e.g. of the held-out clean set) can be cached.
    """
    f = _as_features(features, "features")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {f.shape[0]}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _sqrtm(m: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's sqrtm, with its "singular matrix" warning turned into a flag."""
    import scipy.linalg  # lazily: scipy is only needed for the Fréchet distance ('eval' extra)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = scipy.linalg.sqrtm(m)
    singular = any(issubclass(w.category, scipy.linalg.LinAlgWarning) for w in caught)
    return np.asarray(root), singular


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    ``||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2})`` — the FID formula
    (Heusel et al. 2017), computed as pytorch-fid does: if the product is singular (fewer samples
    than feature dimensions) or its square root is not finite, ``eps`` is added to both diagonals
    and the root recomputed; the imaginary residue that ``sqrtm`` leaves from round-off is dropped
    and a large one (a real numerical failure) raises ``ValueError``. The result is clamped at 0
    (the true distance is non-negative; tiny negatives are round-off).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mean vectors must both have shape ({d},), got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must both be ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    covmean, singular = _sqrtm(sigma1 @ sigma2)
    bad = singular or not np.isfinite(covmean).all()
    if not bad and np.iscomplexobj(covmean) and not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
        bad = True
    if bad:
        logger.warning("Frechet distance: sqrtm of the covariance product is singular or unstable; "
                       "adding %g to the diagonals (usually: fewer samples than feature dimensions)", eps)
        offset = np.eye(d) * eps
        covmean, _ = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if not np.isfinite(covmean).all():
            raise ValueError("Frechet distance: the covariance square root is not finite even with the eps offset")
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imag > 1e-3:
            raise ValueError(f"Frechet distance: imaginary component {imag:.3g} in sqrtm(sigma1 sigma2)")
        covmean = covmean.real
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance_from_features(f1: Features, f2: Features, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians fitted to two ``(N, D)`` feature sets.

    With Inception pool3 features this is FID; with :class:`FittedFeatureExtractor` features
    the number is only comparable within one evaluation run (same fitted extractor).
    """
    a, b = _as_features(f1, "f1"), _as_features(f2, "f2")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    return frechet_distance(mu1, s1, mu2, s2, eps=eps)


# --------------------------------------------------------------------------- precision / recall

def _row_batch(n_cols: int, batch_size: int | None) -> int:
    if batch_size is not None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return batch_size
    return max(1, (1 << 24) // max(n_cols, 1))  # ~128 MiB of float64 distances per block


def _knn_radii(feats: torch.Tensor, k: int, batch: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest *other* point (self is at rank 1)."""
    radii = torch.empty(feats.shape[0], dtype=feats.dtype)
    for i in range(0, feats.shape[0], batch):
        dist = torch.cdist(feats[i:i + batch], feats)
        radii[i:i + batch] = dist.kthvalue(k + 1, dim=1).values
    return radii


def _manifold_coverage(query: torch.Tensor, ref: torch.Tensor, ref_radii: torch.Tensor, batch: int) -> float:
    """Fraction of ``query`` points inside at least one k-NN ball of ``ref``."""
    inside = 0
    for i in range(0, query.shape[0], batch):
        dist = torch.cdist(query[i:i + batch], ref)
        inside += int((dist <= ref_radii.unsqueeze(0)).any(dim=1).sum())
    return inside / query.shape[0]


def precision_recall(real_feats: Features, fake_feats: Features, k: int = 3,
                     batch_size: int | None = None) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., NeurIPS 2019).

    Each set's manifold is the union of balls around its points with radius = distance to the
    k-th nearest neighbour in the same set. Precision = fraction of fake samples inside the real
    manifold (are samples realistic?); recall = fraction of real samples inside the fake manifold
    (is the variety covered?). FD mixes both into one number; a victim that only reproduces a
    few modes has high precision and low recall. Distances are computed in row blocks of
    ``batch_size`` (default: ~128 MiB per block), so 5k x 5k sets fit easily in memory.
    """
    real = torch.from_numpy(_as_features(real_feats, "real_feats"))
    fake = torch.from_numpy(_as_features(fake_feats, "fake_feats"))
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(f"k={k} needs more than k samples in each set, got {real.shape[0]} real "
                         f"and {fake.shape[0]} fake")
    real_radii = _knn_radii(real, k, _row_batch(real.shape[0], batch_size))
    fake_radii = _knn_radii(fake, k, _row_batch(fake.shape[0], batch_size))
    precision = _manifold_coverage(fake, real, real_radii, _row_batch(real.shape[0], batch_size))
    recall = _manifold_coverage(real, fake, fake_radii, _row_batch(fake.shape[0], batch_size))
    return precision, recall


# --------------------------------------------------------------------------- artefacts

def _dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix: row k is the basis function of frequency k / (2n) cycles/px."""
    k = torch.arange(n, dtype=dtype).unsqueeze(1)
    x = torch.arange(n, dtype=dtype).unsqueeze(0)
    m = torch.cos(math.pi * k * (2 * x + 1) / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m


def radial_frequency(height: int, width: int) -> torch.Tensor:
    """``(H, W)`` radial frequency of each DCT coefficient as a fraction of Nyquist.

    Coefficient (ky, kx) oscillates at ky / (2H) and kx / (2W) cycles per pixel; Nyquist is
    1/2, so the normalised radius is ``sqrt((ky/H)^2 + (kx/W)^2)`` (up to ~sqrt(2) in corners).
    """
    fy = torch.arange(height, dtype=torch.float64) / height
    fx = torch.arange(width, dtype=torch.float64) / width
    return torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)


def _spectral_power(images: torch.Tensor, cutoff: float) -> tuple[float, float]:
    """(power above cutoff, total power) summed over images and channels."""
    n, c, h, w = images.shape
    dh, dw = _dct_matrix(h), _dct_matrix(w)
    high = radial_frequency(h, w) > cutoff
    above = total = 0.0
    for sl in _chunks(n, c * h * w):
        x = images[sl].to(torch.float64)
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        coeffs = dh @ x @ dw.T
        power = coeffs.square()
        above += float(power[..., high].sum())
        total += float(power.sum())
    return above, total


def high_frequency_energy(images: ImageBatch, cutoff: float = 0.25) -> float:
    """Fraction of (mean-subtracted) spectral power above ``cutoff`` x Nyquist, radially.

    The spectrum is the per-channel 2-D DCT-II, i.e. the FFT of the mirror-extended image. A plain
    periodic FFT would see a step wherever opposite borders differ and report that edge as
    high-frequency power, so a smooth gradient would look "noisy"; with the mirror extension it
    scores ~0. The transform is orthonormal, so white noise has a flat spectrum and scores
    ``#{coefficients with radius > cutoff} / (H W - 1)`` ~= ``1 - pi cutoff^2 / 4`` (cutoff <= 1).
    Power is pooled over all images and channels (so flat images do not divide by zero);
    an all-flat batch scores 0.
    """
    if not 0.0 <= cutoff:
        raise ValueError(f"cutoff must be >= 0 (a fraction of Nyquist), got {cutoff}")
    above, total = _spectral_power(_as_images(images), cutoff)
    return above / total if total > 0 else 0.0


def _ratio(num: float, den: float, what: str) -> float:
    if den > 0:
        return num / den
    if num == 0:
        return 1.0
    logger.warning("%s: the reference images have zero %s; ratio is infinite", what, what)
    return math.inf


def artifact_ratio(fake: ImageBatch, real: ImageBatch, cutoff: float = 0.25) -> float:
    """High-frequency energy of ``fake`` divided by that of ``real``: > 1 means noisier samples.

    Natural images differ in how much fine detail they carry, so the absolute energy is hard to
    read; the ratio to the clean reference set is what flags a protection that works by making
    the victim's samples textured. 1.0 when both have no high-frequency power.
    """
    return _ratio(high_frequency_energy(fake, cutoff), high_frequency_energy(real, cutoff),
                  "high-frequency energy")


def _box_blur3(x: torch.Tensor) -> torch.Tensor:
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    return F.avg_pool2d(padded, kernel_size=3, stride=1)


def colour_noise(images: ImageBatch) -> float:
    """RMS of the local chroma residual, in [0, 1] intensity units (0 for grey images).

    The residual is the image minus its 3x3 box blur (replicate borders); the chroma axes are
    ``R - G`` and ``B - (R + G) / 2``; the result is ``sqrt(mean(c1^2 + c2^2) / 2)`` over all
    pixels and images. Luminance detail cancels in both axes, so natural texture scores low while
    the per-pixel colour speckle typical of adversarial noise scores high. Grey (1-channel)
    images have no chroma and score 0.
    """
    x = _as_images(images)
    n, c, h, w = x.shape
    if c == 1:
        return 0.0
    if c != 3:
        raise ValueError(f"colour_noise needs RGB (3 channels) or grey (1) images, got {c} channels")
    sq = 0.0
    for sl in _chunks(n, c * h * w):
        chunk = x[sl].to(torch.float64)
        residual = chunk - _box_blur3(chunk)
        r, g, b = residual[:, 0], residual[:, 1], residual[:, 2]
        sq += float(((r - g).square() + (b - (r + g) / 2).square()).sum())
    return math.sqrt(sq / (2 * n * h * w))


def colour_noise_ratio(fake: ImageBatch, real: ImageBatch) -> float:
    """:func:`colour_noise` of ``fake`` over that of ``real`` (1.0 when both are 0)."""
    return _ratio(colour_noise(fake), colour_noise(real), "colour noise")


# --------------------------------------------------------------------------- pair fidelity

def psnr_per_image(a: ImageBatch, b: ImageBatch, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB of each image pair, ``10 log10(data_range^2 / MSE)``; ``inf`` where identical."""
    ta, tb = _pair(a, b)
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
    ta, tb = _pair(a, b)
    n, c, h, w = ta.shape
    window = _gaussian_window(sigma, truncate=3.5)
    r = window.shape[0] // 2
    if h < window.shape[0] or w < window.shape[0]:
        raise ValueError(f"SSIM needs images of at least {window.shape[0]}x{window.shape[0]}, got {h}x{w}")
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    out = []
    for sl in _chunks(n, 5 * c * h * w):
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
    ta, tb = _pair(a, b)
    return int(round(float((ta - tb).abs().max()) * 255.0))
