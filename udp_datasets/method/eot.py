"""Expectation over transformations (EOT): random, differentiable image transforms inside PGD.

A perturbation optimised for the exact pixels it is added to can be washed out by what happens
to published images before training (JPEG, resizing, a little blur, noise) and by deliberate
purification. MetaCloak (Liu et al., CVPR 2024) and earlier adversarial-example work make it
survive by optimising the *expected* loss over such transforms: each PGD step draws one transform
per image and differentiates through it. Every transform here maps ``(B, C, H, W)`` in [0, 1] to
the same shape and range and is differentiable w.r.t. its input; randomness comes from each
sample's own generator, so a sample's protection does not depend on its batch.

- ``blur``: Gaussian blur, sigma uniform in [0.3, 1.2] pixels (separable, reflect padding).
- ``resize``: down-scale by a factor uniform in [0.5, 0.9] (antialiased bilinear) and back up.
- ``jpeg``: a differentiable JPEG approximation, quality uniform in [50, 95]: YCbCr, 8x8 DCT, the
  standard quantisation tables at that quality, rounding with a straight-through gradient
  (the forward pass rounds, the backward pass is the identity), inverse DCT. No chroma
  subsampling and no entropy coding (lossless anyway): an approximation of libjpeg, said so.
- ``noise``: additive Gaussian noise, sigma uniform in [0.01, 0.05].
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..config import EOT_NAMES


Transform = Callable[[torch.Tensor, float], torch.Tensor]
"""(one image (1, C, H, W) in [0, 1], strength u in [0, 1)) -> transformed image."""


def _uniform(generator: torch.Generator) -> float:
    return float(torch.rand((), generator=generator))


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (radius 3 sigma)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    coords = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-coords.pow(2) / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    k = kernel[radius - pad_h: radius + pad_h + 1] if pad_h < radius else kernel
    y = F.conv2d(F.pad(x, (0, 0, pad_h, pad_h), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    k = kernel[radius - pad_w: radius + pad_w + 1] if pad_w < radius else kernel
    return F.conv2d(F.pad(y, (pad_w, pad_w, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def down_up(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Resize to ``factor`` of the size (antialiased bilinear) and back: the detail a re-upload loses."""
    h, w = x.shape[-2:]
    small = (max(1, round(h * factor)), max(1, round(w * factor)))
    y = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------------------- JPEG
_LUMA = torch.tensor([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=torch.float32).view(8, 8)
_CHROMA = torch.full((8, 8), 99.0)
_CHROMA[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]],
                               dtype=torch.float32)


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(device=device, dtype=dtype)


def _quality_scale(quality: float) -> float:
    """libjpeg's mapping from quality (1-100) to a percentage of the standard tables."""
    quality = min(max(quality, 1.0), 100.0)
    return (5000 / quality if quality < 50 else 200 - 2 * quality) / 100


def _round_straight_through(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def jpeg_approximation(x: torch.Tensor, quality: float) -> torch.Tensor:
    """Differentiable JPEG (see the module docstring); grey images use the luma table only."""
    b, c, h, w = x.shape
    ph, pw = (-h) % 8, (-w) % 8
    y = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255
    if c == 3:
        r, g, bl = y[:, 0], y[:, 1], y[:, 2]
        y = torch.stack([0.299 * r + 0.587 * g + 0.114 * bl, -0.168736 * r - 0.331264 * g + 0.5 * bl + 128,
                         0.5 * r - 0.418688 * g - 0.081312 * bl + 128], 1)
    scale = _quality_scale(quality)
    tables = [_LUMA] + [_CHROMA] * (c - 1) if c == 3 else [_LUMA] * c
    q = torch.stack([torch.clamp(torch.floor(t * scale + 0.5), min=1) for t in tables]).to(y)
    d = _dct_matrix(y.device, y.dtype)
    hh, ww = y.shape[-2] // 8, y.shape[-1] // 8
    blocks = (y - 128).view(b, c, hh, 8, ww, 8).permute(0, 1, 2, 4, 3, 5)  # (b, c, hh, ww, 8, 8)
    coeffs = d @ blocks @ d.T
    coeffs = _round_straight_through(coeffs / q[None, :, None, None]) * q[None, :, None, None]
    y = (d.T @ coeffs @ d + 128).permute(0, 1, 2, 4, 3, 5).reshape(b, c, hh * 8, ww * 8)
    if c == 3:
        luma, cb, cr = y[:, 0], y[:, 1] - 128, y[:, 2] - 128
        y = torch.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], 1)
    return (y[..., :h, :w] / 255).clamp(0, 1)


# ------------------------------------------------------------------------- sampling
TRANSFORMS: dict[str, Transform] = {
    "blur": lambda x, u: gaussian_blur(x, 0.3 + 0.9 * u),
    "resize": lambda x, u: down_up(x, 0.5 + 0.4 * u),
    "jpeg": lambda x, u: jpeg_approximation(x, 50 + 45 * u),
    "noise": lambda x, u: x,  # the noise itself is drawn in apply_eot (it needs the generator)
}


def apply_eot(x01: torch.Tensor, names: Sequence[str], generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One random transform from ``names`` per image, drawn with that image's generator.

    Every image draws the same number of values whatever it gets, so the generators stay
    aligned with the rest of the step's randomness.
    """
    if not names:
        return x01
    out = []
    for i, g in enumerate(generators):
        choice = names[int(torch.randint(len(names), (), generator=g))]
        u = _uniform(g)
        noise = torch.randn(tuple(x01.shape[1:]), generator=g)
        xi = x01[i:i + 1]
        if choice == "noise":
            xi = (xi + (0.01 + 0.04 * u) * noise.to(xi)).clamp(0, 1)
        else:
            xi = TRANSFORMS[choice](xi, u)
        out.append(xi)
    return torch.cat(out)

assert set(TRANSFORMS) == set(EOT_NAMES), "config.EOT_NAMES and method/eot.py must name the same transforms"
