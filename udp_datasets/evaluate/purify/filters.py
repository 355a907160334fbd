"""Image filters an attacker tries first on protected images before training on them.

JPEG re-encoding, a down-up resize, a Gaussian blur (Pillow) and additive Gaussian noise (the
simple purification Hönig et al. 2024 found to break published protections). Each attack maps
(H, W, C) uint8 -> (H, W, C) uint8 and is deterministic (the noise is seeded by the image's own
bytes), so the robustness columns of a report can be reproduced exactly. ``--attacks`` names the
keys of :data:`ATTACKS`.
"""

from __future__ import annotations

import hashlib
import io
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageFilter

Attack = Callable[[np.ndarray], np.ndarray]


def _pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)


def _arr(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def jpeg(quality: int) -> Attack:
    def attack(arr: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        _pil(arr).save(buf, format="JPEG", quality=quality)
        return _arr(Image.open(io.BytesIO(buf.getvalue())).convert("L" if arr.shape[2] == 1 else "RGB"))
    return attack


def resize(factor: float = 0.5) -> Attack:
    """Downscale by ``factor`` then back up (bicubic), as a cheap purification."""
    def attack(arr: np.ndarray) -> np.ndarray:
        img = _pil(arr)
        w, h = img.size
        small = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)
        return _arr(small.resize((w, h), Image.Resampling.BICUBIC))
    return attack


def blur(radius: float = 0.5) -> Attack:
    def attack(arr: np.ndarray) -> np.ndarray:
        return _arr(_pil(arr).filter(ImageFilter.GaussianBlur(radius)))
    return attack


def gaussian_noise(sigma: float = 0.05) -> Attack:
    """Add N(0, sigma) noise on the [0, 1] scale, clip, round to 8 bits; seeded by the image's bytes."""
    def attack(arr: np.ndarray) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).digest()[:8], "little")
        noise = np.random.default_rng(seed).normal(0.0, sigma, arr.shape)
        return (np.clip(arr.astype(np.float64) / 255 + noise, 0, 1) * 255).round().astype(np.uint8)
    return attack


ATTACKS: dict[str, Attack] = {
    "jpeg75": jpeg(75),
    "jpeg90": jpeg(90),
    "resize50": resize(0.5),
    "blur0.5": blur(0.5),
    "noise0.05": gaussian_noise(0.05),
}
DEFAULT_ATTACKS = ("jpeg75", "jpeg90", "resize50", "blur0.5")
"""The attacks ``udp-datasets evaluate`` applies unless told otherwise (``--attacks``)."""


def with_attacks(protected: dict[str, Sequence[np.ndarray]], attacks: Sequence[str]) -> dict[str, list[np.ndarray]]:
    """Each protected set, plus each attack applied to it (``name+attack``)."""
    out: dict[str, list[np.ndarray]] = {}
    for name, images in protected.items():
        out[name] = list(images)
        for attack in attacks:
            if attack not in ATTACKS:
                raise ValueError(f"unknown attack {attack!r}; choose from {sorted(ATTACKS)}")
            out[f"{name}+{attack}"] = [ATTACKS[attack](a) for a in images]
    return out
