"""Image sets of an evaluation: load a dataset as arrays, resize, split off a held-out part, hash.

Every image here is an (H, W, C) uint8 array; a set is a sequence of them, in order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..images import ImageError, load_image

Images = Sequence[np.ndarray]


def load_images(src: str, image_column: str = "image", limit: int | None = None) -> list[np.ndarray]:
    """Decode a dataset's images to (H, W, C) uint8 arrays (alpha dropped)."""
    from ..sources import open_source
    from ..sources.columns import raw_image_column

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
    """(train indices, held-out indices) of ``n`` images, sorted; ``fraction`` of them held out."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction {fraction} must be in (0, 1)")
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(n * fraction)))
    return np.sort(perm[k:]), np.sort(perm[:k])


def bundled_split(count: int, size: int, seed: int, fraction: float = 0.25
                  ) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The pixel ablations' data: ``count`` bundled photo patches of ``size`` px (always patch seed 0)
    and their split by ``seed``: (all images, train indices, train images, held-out images)."""
    from ..sources.bundled import photo_patches

    clean = photo_patches(size, count, seed=0)
    train_idx, hold_idx = split_holdout(len(clean), fraction, seed)
    return clean, train_idx, [clean[i] for i in train_idx], [clean[i] for i in hold_idx]


def resize_all(images: Images, size: int) -> list[np.ndarray]:
    """Every image at ``size`` x ``size`` (box filter); images already that size are kept as they are."""
    from PIL import Image

    out = []
    for a in images:
        if a.shape[:2] == (size, size):
            out.append(a)
            continue
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).resize((size, size), Image.Resampling.BOX)
        arr = np.asarray(img, dtype=np.uint8)
        out.append(arr[:, :, None] if arr.ndim == 2 else arr)
    return out


def data_hash(images: Images) -> str:
    """Content hash of a training set (order-sensitive): the cache key of what was trained on it (the
    first 16 hex digits of :func:`~udp_datasets.models.pair_pretraining.corpus_sha256`)."""
    from ..models.pair_pretraining import corpus_sha256

    return corpus_sha256(images)[:16]
