"""Extension rules: the one place that says what is an image, a shard and which files of a
dataset folder are data.

Readers (tar and Parquet shards, image folders, published folders that ``verify`` re-reads)
take these rules from here. The rules of one format (the WebDataset sample key, a protected
``KEY.jpg`` written as ``KEY.png``) belong to that format's codec in :mod:`udp_datasets.formats`.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Literal

COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz")
TAR_SUFFIXES = (".tar", *COMPRESSED_TAR_SUFFIXES)
PARQUET_SUFFIXES = (".parquet",)
SHARD_SUFFIXES = TAR_SUFFIXES + PARQUET_SUFFIXES
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "ppm", "pgm", "pbm",
                              "pnm", "gif"})
"""File and WebDataset member extensions that hold an image (the last extension, lower case)."""
RECORD_FILE = "udp_protection.json"
"""The job record ``udp-datasets protect`` writes beside its data (the shard job keeps ``.udp/job.json``)."""
MANIFEST_FILE = "manifest.parquet"
"""The per-sample manifest of a protected folder (the shard job keeps ``.udp/manifest.parquet``)."""
NOT_DATA_NAMES = frozenset({"README.md", ".gitattributes", "errors.jsonl", MANIFEST_FILE, RECORD_FILE})
"""Files at the top of a dataset folder that are not data: the card, manifest, job record, errors."""
NOT_DATA_SUFFIXES = (".done.json", ".manifest.parquet")  # shard markers and per-shard manifests

ShardKind = Literal["tar", "parquet"]


def shard_kind(name: str) -> ShardKind | None:
    """``tar`` or ``parquet`` by the file name's suffix, else ``None``."""
    lower = name.lower()
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def unsafe_name(name: str) -> str | None:
    """Why a member name may not be written into an output shard (extracting it would write outside
    the folder it is extracted into), or None: an absolute path, a ``..`` step, a Windows drive or
    backslash path, an empty name."""
    if not name or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if any(part == ".." for part in re.split(r"[/\\]", name)):
        return "a '..' step out of the folder"
    return None


def is_image_extension(ext: str | None, image_extensions: frozenset[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether a (possibly multi-part) extension such as ``left.JPG`` names an image."""
    return bool(ext) and ext.rsplit(".", 1)[-1].lower() in image_extensions  # type: ignore[union-attr]


def is_image_name(name: str, image_extensions: frozenset[str] = IMAGE_EXTENSIONS) -> bool:
    """Whether a file or member name's last extension is an image extension."""
    base = name.rsplit("/", 1)[-1]
    return "." in base and is_image_extension(base.rsplit(".", 1)[1], image_extensions)


def is_data_file(rel: str) -> bool:
    """Whether a file of a dataset folder (its path relative to the folder) belongs to the data:
    not the card, manifests, job records, shard markers or errors, and not hidden (which also
    leaves out temporary files and the shard job's ``.udp/`` bookkeeping)."""
    return not (rel in NOT_DATA_NAMES or rel.endswith(NOT_DATA_SUFFIXES) or is_hidden(rel))


def is_hidden(rel: str) -> bool:
    """Whether a relative path lies in or is a dot-file or dot-folder (temporary files, ``.udp/``)."""
    return any(part.startswith(".") for part in PurePosixPath(rel).parts)


# --------------------------------------------------------------- image formats, by name and by content
UNREADABLE_IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("avif", "avifs"), ("AVIF", "pillow-avif-plugin (or Pillow >= 11.3 built with libavif)")),
    **dict.fromkeys(("heic", "heif", "hif"), ("HEIC/HEIF", "pillow-heif")),
    "jxl": ("JPEG XL", "pillow-jxl-plugin"),
    **dict.fromkeys(("jp2", "j2k", "j2c", "jpx", "jpf"), ("JPEG 2000", "Pillow built with OpenJPEG")),
    "psd": ("Photoshop PSD", "psd-tools"), "exr": ("OpenEXR", "OpenEXR"), "hdr": ("Radiance HDR", "imageio"),
    "qoi": ("QOI", "Pillow >= 9.5"), "tga": ("TGA", "Pillow"), **dict.fromkeys(("ico", "cur"), ("ICO", "Pillow")),
    **dict.fromkeys(("svg", "svgz"), ("SVG (vector)", "cairosvg, to rasterise it")),
    **dict.fromkeys(("dng", "cr2", "cr3", "nef", "arw", "orf", "rw2", "raf"), ("camera RAW", "rawpy")),
}
"""Extensions of image formats this tool does not protect: ``ext -> (format, what would read it)``.
A member or file with one is never copied through; its sample is quarantined naming both."""
_BMFF_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", **dict.fromkeys(
    (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"), "HEIC/HEIF")}
_FORMAT_LIBRARY = {"AVIF": "avif", "HEIC/HEIF": "heic", "JPEG XL": "jxl", "JPEG 2000": "jp2",
                   "Photoshop PSD": "psd", "OpenEXR": "exr", "QOI": "qoi"}


def image_format(data: bytes | None) -> str | None:
    """The image format ``data``'s first bytes announce (``PNG``, ``JPEG``, ``GIF``, ``WEBP``,
    ``BMP``, ``TIFF``, ``AVIF``, ``HEIC/HEIF``, ``JPEG XL``, ``JPEG 2000``, ``Photoshop PSD``,
    ``OpenEXR``, ``QOI``), or None. Only signatures that text, JSON or other data do not start
    with by chance (a BMP's ``BM`` counts only with its header's zero and size fields)."""
    if not data or len(data) < 4:
        return None
    head = bytes(data[:32])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 18 and head[6:10] == b"\0\0\0\0" and \
            int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124):
        return "BMP"
    if head.startswith((b"II*\0", b"MM\0*")):
        return "TIFF"
    if head[4:8] == b"ftyp" and head[8:12] in _BMFF_BRANDS:
        return _BMFF_BRANDS[head[8:12]]
    if head.startswith((b"\xff\x0a", b"\0\0\0\x0cJXL \r\n\x87\n")):
        return "JPEG XL"
    if head.startswith((b"\0\0\0\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG 2000"
    if head.startswith(b"8BPS"):
        return "Photoshop PSD"
    if head.startswith(b"\x76\x2f\x31\x01"):
        return "OpenEXR"
    if head.startswith(b"qoif"):
        return "QOI"
    return None


def unreadable_format(name: str | None, data: bytes | None) -> tuple[str, str] | None:
    """``(format, what would read it)`` when a file or member is an image this tool cannot
    protect, by its last extension or by its content (AVIF bytes named ``.jpg`` included);
    None for readable formats and for what is no image."""
    if name:
        base = name.rsplit("/", 1)[-1]
        ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
        if ext in UNREADABLE_IMAGE_FORMATS:
            return UNREADABLE_IMAGE_FORMATS[ext]
    fmt = image_format(data)
    if fmt in _FORMAT_LIBRARY:
        return UNREADABLE_IMAGE_FORMATS[_FORMAT_LIBRARY[fmt]]
    return None
