"""Distribution distances between two feature sets: did the victim learn the clean distribution?

:func:`frechet_distance` / :func:`frechet_distance_from_features` (FID when the features come
from Inception) and :func:`precision_recall` (Kynkäänniemi et al. 2019). Features are ``(N, D)``
arrays from one extractor (:mod:`.features`).

Why not torchmetrics' ``FrechetInceptionDistance``: it is a stateful metric around an
``nn.Module`` feature extractor, which it probes with a 299x299 uint8 dummy image and feeds raw
batches. Ours is fitted per evaluation on the clean training images (not an ``nn.Module``), and
the same features also feed precision / recall, so they are extracted once and passed here as
arrays. Its matrix square root (eigenvalues of the product, no singular fallback) also differs
from pytorch-fid's ``sqrtm`` with the eps retry that every committed number was computed with.
So :func:`frechet_distance` stays our own (about 40 lines).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from .arrays import Features, as_features

logger = logging.getLogger(__name__)


def feature_statistics(features: Features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased, N - 1) covariance of ``(N, D)`` features, in float64.

    Kept separate so that reference statistics (e.g. of the held-out clean set) can be cached.
    """
    f = as_features(features, "features")
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
    a, b = as_features(f1, "f1"), as_features(f2, "f2")
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
    real = torch.from_numpy(as_features(real_feats, "real_feats"))
    fake = torch.from_numpy(as_features(fake_feats, "fake_feats"))
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
