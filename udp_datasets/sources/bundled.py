"""Real images that ship offline with scikit-image: photographs and 200 face crops.

They back the demo, the tests and the evaluation's default data, so every
number in this repository can be reproduced without a download.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
          "colorwheel", "retina")


def _skimage_data():
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("the bundled images come from scikit-image: pip install 'udp-datasets[demo]'") from exc
    return skimage.data


def photo(name: str) -> np.ndarray:
    """One RGB uint8 photograph by scikit-image name."""
    arr = getattr(_skimage_data(), name)()
    return np.ascontiguousarray(arr[:, :, :3]).astype(np.uint8)


def photo_crops(size: int = 64, per_photo: int = 4, names: tuple[str, ...] = PHOTOS) -> list[np.ndarray]:
    """Square crops of the photographs, resized to ``size`` (deterministic grid of crops)."""
    out: list[np.ndarray] = []
    for name in names:
        arr = photo(name)
        h, w = arr.shape[:2]
        side = min(h, w) // 2
        ys = np.linspace(0, h - side, num=max(per_photo // 2, 1) + 1).astype(int)
        xs = np.linspace(0, w - side, num=2).astype(int)
        crops = [(y, x) for y in ys for x in xs][:per_photo]
        for y, x in crops:
            img = Image.fromarray(arr[y:y + side, x:x + side]).resize((size, size), Image.Resampling.LANCZOS)
            out.append(np.asarray(img, dtype=np.uint8))
    return out


def faces(count: int = 200) -> list[np.ndarray]:
    """Grey 25x25 face crops (LFW subset), (H, W, 1) uint8."""
    arr = _skimage_data().lfw_subset()[:count]
    return [np.round(a * 255).astype(np.uint8)[:, :, None] for a in arr]


def faces_rgb(size: int = 32, count: int = 200) -> list[np.ndarray]:
    """The faces as RGB ``size`` x ``size`` images (for models that expect colour)."""
    out = []
    for a in faces(count):
        img = Image.fromarray(a[:, :, 0]).resize((size, size), Image.Resampling.BICUBIC).convert("RGB")
        out.append(np.asarray(img, dtype=np.uint8))
    return out


def photo_patches(size: int = 16, count: int = 2000, seed: int = 0,
                  names: tuple[str, ...] = PHOTOS) -> list[np.ndarray]:
    """Random square patches of the photographs at random scales, resized to ``size``.

    A few thousand varied natural-image patches: the evaluation's default data, large
    enough for stable Fréchet distances at small resolution on a CPU.
    """
    rng = np.random.default_rng(seed)
    sources = [photo(n) for n in names]
    out: list[np.ndarray] = []
    for i in range(count):
        arr = sources[i % len(sources)]
        h, w = arr.shape[:2]
        side = int(rng.integers(size * 2, max(size * 2 + 1, min(h, w) // 3)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        img = Image.fromarray(arr[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BOX)
        out.append(np.asarray(img, dtype=np.uint8))
    return out
