"""Artefact measures: protections that "work" by making samples noisy or textured show up here
even when a feature-space distance is ambiguous.

:func:`high_frequency_energy`, :func:`artifact_ratio`, :func:`colour_noise`,
:func:`colour_noise_ratio`; images as in :mod:`.arrays`.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from .arrays import ImageBatch, as_images, pixel_chunks

logger = logging.getLogger(__name__)


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
    for sl in pixel_chunks(n, c * h * w):
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
    above, total = _spectral_power(as_images(images), cutoff)
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
    x = as_images(images)
    n, c, h, w = x.shape
    if c == 1:
        return 0.0
    if c != 3:
        raise ValueError(f"colour_noise needs RGB (3 channels) or grey (1) images, got {c} channels")
    sq = 0.0
    for sl in pixel_chunks(n, c * h * w):
        chunk = x[sl].to(torch.float64)
        residual = chunk - _box_blur3(chunk)
        r, g, b = residual[:, 0], residual[:, 1], residual[:, 2]
        sq += float(((r - g).square() + (b - (r + g) / 2).square()).sum())
    return math.sqrt(sq / (2 * n * h * w))


GREY_CHROMA = 1e-3
"""Colour noise (RMS chroma residual) below which reference images count as grey."""
CHROMA_FLOOR = 1 / 255
"""The colour-noise denominator for grey references: one 8-bit level of RMS chroma, about where colour
speckle starts to show on a grey image. Any colour in samples of a grey domain is an artifact."""


def colour_noise_ratio(fake: ImageBatch, real: ImageBatch) -> float:
    """:func:`colour_noise` of ``fake`` over that of ``real``; over :data:`CHROMA_FLOOR` when ``real`` is
    grey (below :data:`GREY_CHROMA`), where a ratio to ~0 would be infinite.

    Why a floor and not "n/a": a victim fine-tuned on protected grey images draws colour speckle, the
    most visible artifact there is on a grey domain (measured on grey shapes: 8.7x the clean fine-tune's
    colour noise at 32/255; docs/efficacy.md). Until 0.3.1 the few-shot artifact score dropped this term
    for grey references and could not see it."""
    reference = colour_noise(real)
    return colour_noise(fake) / (CHROMA_FLOOR if reference < GREY_CHROMA else reference)
