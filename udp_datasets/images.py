"""Decode, validate and encode images: the only place that knows about pixel formats.

Mode policy (what is protected and what comes out, always lossless PNG):

=============================  ==============================================
input                          output
=============================  ==============================================
RGB                            RGB, all three channels perturbed
L (grey), 1 (bi-level)         L: one perturbation shared by the grey channel
RGBA, LA, PA, P+transparency   colour perturbed, alpha kept byte-identical
P (palette), CMYK, YCbCr, LAB  converted to RGB, then protected (RGB out)
I;16, I, F (16/32-bit)         refused: protecting would silently drop precision
animated (several frames)      refused: only one frame could be protected
=============================  ==============================================

EXIF orientation is applied (the pixels people see are the ones protected) and
metadata other than the ICC colour profile is not carried into the PNG.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000  # ~8k x 8k; larger inputs are refused as likely bombs
REFUSED_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
DEEP_RAWMODE = re.compile(r"^(?!BGR)[A-Za-z]+;(16|32)")
"""Decoder raw modes of more than 8 bits per channel (``RGB;16B`` of a 48-bit PNG, ``I;16``, ``LA;16B``...);
``BGR;15`` / ``BGR;16`` are packed 5-6-5 pixels, 8 bits or fewer per channel."""
PATH_ONLY_REASON = (
    "the image entry has no bytes, only a path (bytes: null), and no readable file at that path inside "
    "the source's own folder: images from shards and from remote or Hub datasets are taken from their "
    "bytes only, and a path inside data is opened only under a local source's own folder")
"""The one reason for a path-only entry that may not be opened; it says nothing of whether the path exists."""
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9A-Fa-f]+>")
TO_RGB_MODES = {"P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"}


class ImageError(ValueError):
    """An image that cannot be protected; ``key`` names the sample, ``reason`` says why."""

    def __init__(self, reason: str, key: str | None = None):
        self.reason = reason
        self.key = key
        super().__init__(f"sample {key!r}: {reason}" if key is not None else reason)


@dataclass
class DecodedImage:
    """Pixels ready to protect, plus what must survive unchanged."""

    pixels: np.ndarray  # (H, W, C) uint8, C = 1 or 3: the channels that are perturbed
    alpha: np.ndarray | None  # (H, W) uint8, carried through untouched
    icc_profile: bytes | None
    source_sha256: str | None  # of the encoded source bytes, when there were bytes

    @property
    def mode(self) -> str:
        base = "L" if self.pixels.shape[2] == 1 else "RGB"
        return base + ("A" if self.alpha is not None else "")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    def pixel_sha256(self) -> str:
        """Content hash of the decoded pixels: the default per-sample seed key."""
        h = hashlib.sha256(str(self.pixels.shape).encode())
        h.update(np.ascontiguousarray(self.pixels).tobytes())
        if self.alpha is not None:
            h.update(np.ascontiguousarray(self.alpha).tobytes())
        return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_image(value: Any, key: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, *,
               open_paths: bool = True) -> DecodedImage:
    """Decode anything a datasets ``Image`` column or a user may hand us.

    Accepts a PIL image, ``{"bytes": ..., "path": ...}``, raw bytes, a file path or
    an (H, W[, C]) uint8 array. Raises :class:`ImageError` with a precise reason.
    ``open_paths=False`` (data from elsewhere: the protector, verify) refuses a path-only
    entry or a path with :data:`PATH_ONLY_REASON` without looking at the path; the readers
    that may open a path inside data do it themselves, under a source's own folder
    (:func:`udp_datasets.sources.paths.read_image_path`).
    """
    data: bytes | None = None
    if isinstance(value, Image.Image):
        image = value
    elif isinstance(value, np.ndarray):
        return _from_array(value, key)
    else:
        data = _read_bytes(value, key, open_paths)
        if len(data) == 0:
            raise ImageError("empty (0-byte) image", key)
        image = _open(data, key, max_pixels)
        _check_depth(image, data, key)
    _check_size(image, key, max_pixels)
    if getattr(image, "n_frames", 1) > 1:
        raise ImageError(f"animated image with {image.n_frames} frames; only still images can be "
                         "protected (extract the frames first)", key)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image data ({describe_error(exc)})", key) from exc
    icc = image.info.get("icc_profile")
    pixels, alpha = _split_mode(image, key)
    return DecodedImage(pixels=pixels, alpha=alpha, icc_profile=icc,
                        source_sha256=sha256_bytes(data) if data is not None else None)


def describe_error(exc: BaseException) -> str:
    """An exception's message without object reprs (``<_io.BytesIO object at 0x...>`` says nothing)."""
    return _OBJECT_REPR.sub("", str(exc)).strip() or type(exc).__name__


def _read_bytes(value: Any, key: str | None, open_paths: bool = True) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return bytes(value["bytes"])
        if value.get("path"):
            if not open_paths:
                raise ImageError(PATH_ONLY_REASON, key)
            return _read_path(value["path"], key)
        raise ImageError("image entry has neither bytes nor a path", key)
    if isinstance(value, (str, os.PathLike)):
        if not open_paths:
            raise ImageError(PATH_ONLY_REASON, key)
        return _read_path(value, key)
    if value is None:
        raise ImageError("image is missing (None)", key)
    raise ImageError(f"unsupported image value of type {type(value).__name__}", key)


def _read_path(path: str | os.PathLike, key: str | None) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image file {path}: {exc.strerror or exc}", key) from exc


def _open(data: bytes, key: str | None, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageError(f"not a readable image (no image format recognises its {len(data)} bytes, which "
                         f"begin {data[:8]!r})", key) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"not a readable image ({describe_error(exc)})", key) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt image data ({describe_error(exc)})", key) from exc


def _check_depth(image: Image.Image, data: bytes, key: str | None) -> None:
    """Refuse more than 8 bits per channel before any conversion can drop them: Pillow opens a
    48-bit RGB PNG as mode ``RGB`` (the decoder's raw mode ``RGB;16B`` says what the file holds)."""
    png_depth = data[24] if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 24 else None
    rawmodes = [t.args if isinstance(t.args, str) else (t.args[0] if t.args else "")
                for t in getattr(image, "tile", None) or []]
    deep = [r for r in rawmodes if isinstance(r, str) and DEEP_RAWMODE.match(r)]
    if png_depth == 16 or deep:
        what = "a 16-bit PNG" if png_depth == 16 else f"raw mode {deep[0]}"
        raise ImageError(f"{image.format or 'image'} with more than 8 bits per channel ({what}, opened as "
                         f"{image.mode}): saving the protected image as 8-bit would silently drop precision; "
                         "convert to 8-bit first", key)


def _check_size(image: Image.Image, key: str | None, max_pixels: int) -> None:
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})", key)
    if w * h > max_pixels:
        raise ImageError(f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
                         "(raise max_pixels if this is intended)", key)


def _split_mode(image: Image.Image, key: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    mode = image.mode
    if mode in REFUSED_MODES:
        raise ImageError(f"{mode} ({'16' if mode.startswith('I;16') else '32'}-bit) images are not "
                         "supported: saving the protected image as 8-bit would silently drop "
                         "precision; convert to 8-bit first", key)
    if (mode == "P" and "transparency" in image.info) or mode == "PA":
        image = image.convert("RGBA")
    elif mode in TO_RGB_MODES:
        image = image.convert("RGB")
    elif mode == "1":
        image = image.convert("L")
    elif mode in {"La", "RGBa"}:
        image = image.convert(mode.upper())
    mode = image.mode
    if mode not in {"RGB", "L", "RGBA", "LA"}:
        raise ImageError(f"unsupported image mode {mode!r}", key)
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if mode.endswith("A"):
        return np.ascontiguousarray(arr[:, :, :-1]), np.ascontiguousarray(arr[:, :, -1])
    return np.ascontiguousarray(arr), None


def _from_array(arr: np.ndarray, key: str | None) -> DecodedImage:
    if arr.dtype != np.uint8:
        raise ImageError(f"array images must be uint8, got {arr.dtype}", key)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ImageError(f"array image must be (H, W), (H, W, 3) or (H, W, 4), got {arr.shape}", key)
    alpha = np.ascontiguousarray(arr[:, :, 3]) if arr.shape[2] == 4 else None
    return DecodedImage(pixels=np.ascontiguousarray(arr[:, :, :3] if alpha is not None else arr),
                        alpha=alpha, icc_profile=None, source_sha256=None)


def encode_png(pixels: np.ndarray, alpha: np.ndarray | None = None,
               icc_profile: bytes | None = None) -> bytes:
    """Lossless, deterministic PNG bytes (no timestamps or text chunks)."""
    arr = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    if alpha is not None:
        arr = np.dstack([pixels, alpha]) if pixels.shape[2] == 3 else np.dstack([pixels[:, :, 0], alpha])
    image = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"format": "PNG", "compress_level": 6}
    if icc_profile:
        kwargs["icc_profile"] = icc_profile
    image.save(buf, **kwargs)
    return buf.getvalue()


@dataclass
class ProtectedImage:
    """One protected image: PNG bytes plus the numbers that go into provenance."""

    key: str
    png: bytes
    source_sha256: str | None
    sha256: str
    linf: int
    psnr: float
    width: int
    height: int


@dataclass
class FailedImage:
    """An image that was not protected: its key, its position and why (what quarantine records)."""

    key: str
    index: int
    reason: str


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two 8-bit images (infinite when they are equal)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def protected_image(key: str, clean: DecodedImage, pixels: np.ndarray, linf: int) -> ProtectedImage:
    """The PNG of ``pixels`` (8-bit, already proven within the budget, ``linf`` levels from ``clean``), with
    ``clean``'s alpha and ICC profile carried over, and its provenance numbers."""
    png = encode_png(pixels, clean.alpha, clean.icc_profile)
    return ProtectedImage(key=key, png=png, source_sha256=clean.source_sha256, sha256=sha256_bytes(png), linf=linf,
                          psnr=psnr_uint8(clean.pixels, pixels), width=pixels.shape[1], height=pixels.shape[0])


def decode_png_pixels(data: bytes) -> np.ndarray:
    """Decode PNG bytes to an (H, W, C) uint8 array (used by checks and tests)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "PNG":
            raise ImageError(f"expected PNG, got {im.format}")
        arr = np.asarray(im)
    return arr[:, :, None] if arr.ndim == 2 else arr
