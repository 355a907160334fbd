"""The metrics' input rules: what an image batch and a feature set are, checked once.

Image convention, everywhere in :mod:`udp_datasets.evaluate.metrics`: a float ``torch.Tensor``
**or** ``numpy.ndarray`` in [0, 1], channel-first, shape ``(N, C, H, W)``; a single ``(C, H, W)``
image counts as ``N = 1`` and ``uint8`` input is divided by 255. Channel-last data (what PIL and
:mod:`udp_datasets.sources.bundled` give) goes through :func:`hwc_to_nchw` first; nothing here
guesses the layout. Values outside [0, 1] (e.g. a model's [-1, 1] output) are refused, because
every metric would silently change meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch

ImageBatch = Union[torch.Tensor, np.ndarray]
Features = Union[torch.Tensor, np.ndarray]

_RANGE_TOLERANCE = 1e-4
# Pixels per chunk for the per-image metrics: bounds memory on large (e.g. 512 px) batches.
_CHUNK_PIXELS = 1 << 22


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
        a = np.ascontiguousarray(a) if a.flags.writeable else np.array(a)  # torch wants writable memory
        t = torch.from_numpy(a).permute(2, 0, 1)
        t = t.float() / 255.0 if a.dtype == np.uint8 else t.float()
        out.append(t)
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) != 1:
        raise ValueError(f"images have different shapes {sorted(shapes)}; resize them first")
    return torch.stack(out)


def as_images(x: ImageBatch, name: str = "images", dtype: torch.dtype = torch.float32) -> torch.Tensor:
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


def image_pair(a: ImageBatch, b: ImageBatch, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of the same shape, checked as :func:`as_images` (float64 by default)."""
    ta, tb = as_images(a, "a", dtype), as_images(b, "b", dtype)
    if ta.shape != tb.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(ta.shape)} and {tuple(tb.shape)}")
    return ta, tb


def as_features(f: Features, name: str) -> np.ndarray:
    """``(N, D)`` finite features as a float64 array, or a clear error."""
    arr = f.detach().cpu().numpy() if isinstance(f, torch.Tensor) else np.asarray(f)
    arr = arr.astype(np.float64, copy=False)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected (N, D) features, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return arr


def pixel_chunks(n: int, per_item: int) -> list[slice]:
    """Slices of ``n`` items of ``per_item`` values each, a bounded number of pixels per slice."""
    step = max(1, _CHUNK_PIXELS // max(per_item, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]
