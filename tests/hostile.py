"""The hostile-input corpus, generated: every case is built in code here (no committed blobs).

Each :class:`Case` is one image payload as a hostile or broken input would carry it, with the
behaviour the README documents for it ("Bad input, errors and exit codes"): ``protected`` (and
then the mode that comes out) or ``quarantined`` with a reason that matches ``reason``. The test
files run every case through every path it can reach (tests/test_hostile_inputs.py).

Images are tiny (a few pixels a side) except where size is the point; the secret file that
path-only entries point at is written by the test into its own temporary folder.
"""

from __future__ import annotations

import io
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageCms

from udp_datasets.images import PATH_ONLY_REASON

W, H = 12, 10  # width != height, so a rotation shows


def gradient(w: int = W, h: int = H, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A smooth, unsaturated test picture (a perturbation never rounds away on it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 60 + (xx * 97 // max(w, 1) + yy * 53 // max(h, 1)) % 120
    arr = np.stack([base + 10 * c for c in range(channels)], axis=-1) + rng.integers(0, 8, (h, w, channels))
    return arr.astype(np.uint8)


def encode(image: Image.Image, fmt: str = "PNG", **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def png_raw(width: int, height: int, depth: int, color_type: int, channels: int) -> bytes:
    """A PNG written chunk by chunk, for what Pillow will not write (48/64-bit colour, a lying IHDR:
    a huge one gets only a few rows of data, the header is what a bomb check must read)."""
    sample = np.full(min(width, 64) * channels, 0x1234 if depth == 16 else 0x56, ">u2" if depth == 16 else "u1").tobytes()
    raw = b"".join(b"\x00" + sample for _ in range(min(height, 4)))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _rgb() -> bytes:
    return encode(Image.fromarray(gradient()))


def _grey() -> bytes:
    return encode(Image.fromarray(gradient(channels=1)[:, :, 0]))


def _one_by_one() -> bytes:
    return encode(Image.fromarray(np.array([[[120, 130, 140]]], np.uint8)))


def _cmyk() -> bytes:
    return encode(Image.fromarray(gradient(channels=4), "CMYK"), "JPEG", quality=95)


def _palette_transparency() -> bytes:
    image = Image.fromarray(gradient()).quantize(16)
    return encode(image, transparency=0)


def _la() -> bytes:
    return encode(Image.fromarray(gradient(channels=2), "LA"))


def _rgba() -> bytes:
    arr = gradient(channels=4)
    arr[:, :, 3] = np.arange(W, dtype=np.uint8)[None, :] * 20
    return encode(Image.fromarray(arr, "RGBA"))


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    return encode(Image.fromarray(gradient()), "JPEG", quality=95, exif=exif.tobytes())


def _icc() -> bytes:
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return encode(Image.fromarray(gradient()), icc_profile=profile)


def _truncated_png() -> bytes:
    data = _rgb()
    return data[: len(data) // 2]


def _truncated_jpeg() -> bytes:
    data = encode(Image.fromarray(gradient(64, 48)), "JPEG", quality=95)
    return data[: len(data) // 2]


def _i16() -> bytes:
    return encode(Image.fromarray(np.full((H, W), 1000, np.uint16)))


def _gif() -> bytes:
    frames = [Image.fromarray(gradient(seed=s)).convert("P") for s in range(3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:])


def _apng() -> bytes:
    frames = [Image.fromarray(gradient(seed=s)) for s in range(3)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


def big_png(width: int, height: int) -> bytes:
    """A large flat PNG that is a small file (a 16-megapixel one is about 50 KB)."""
    return encode(Image.new("RGB", (width, height), (90, 120, 150)), compress_level=9)


def ftyp_image(brand: bytes) -> bytes:
    """The start of an ISO-BMFF image (AVIF ``avif``, HEIC ``heic``): what a sniffer sees; no real
    encoder is needed, since such a file is refused by its name or header before any decoding."""
    return b"\x00\x00\x00\x1cftyp" + brand + b"\x00\x00\x00\x00mif1" + brand + b"miaf" + bytes(64)


UNPROTECTED_FORMATS = {  # file or member name -> (payload, reason regex): images the tool does not protect
    "photo.avif": (ftyp_image(b"avif"), "AVIF image data.*pillow-avif-plugin"),
    "shot.heic": (ftyp_image(b"heic"), "HEIC/HEIF image data.*pillow-heif"),
    "disguised.dat": (ftyp_image(b"heic"), "HEIC/HEIF image data.*pillow-heif"),  # by content
    "renamed.bin": (None, "holds PNG image bytes"),  # a PNG under a name no reader takes for an image
}


def unprotected_format_payload(name: str) -> bytes:
    data = UNPROTECTED_FORMATS[name][0]
    return data if data is not None else _rgb()


@dataclass(frozen=True)
class Case:
    """One corpus entry: how to make its payload and what must happen to it."""

    name: str
    make: Callable[[], Any]
    outcome: str  # "protected" | "quarantined"
    reason: str = ""  # regex the quarantine reason matches
    mode: str | None = None  # PIL mode of the protected output
    suffix: str = "png"  # file extension when written as a file or tar member

    @property
    def protected(self) -> bool:
        return self.outcome == "protected"


PATH_ONLY = "no bytes, only a path"
"""What the reason of every path-only entry says (the whole reason is images.PATH_ONLY_REASON)."""
assert PATH_ONLY in PATH_ONLY_REASON

# payloads that are encoded bytes: every path that reads images can carry them
BYTE_CASES = [
    Case("rgb", _rgb, "protected", mode="RGB"),
    Case("grey", _grey, "protected", mode="L"),
    Case("one_by_one", _one_by_one, "protected", mode="RGB"),
    Case("cmyk_jpeg", _cmyk, "protected", mode="RGB", suffix="jpg"),
    Case("palette_transparency", _palette_transparency, "protected", mode="RGBA"),
    Case("la", _la, "protected", mode="LA"),
    Case("rgba", _rgba, "protected", mode="RGBA"),
    Case("exif_rotated", _exif_rotated, "protected", mode="RGB", suffix="jpg"),
    Case("icc_profile", _icc, "protected", mode="RGB"),
    Case("truncated_png", _truncated_png, "quarantined", "corrupt|truncated"),
    Case("truncated_jpeg", _truncated_jpeg, "quarantined", "corrupt|truncated", suffix="jpg"),
    Case("zero_bytes", lambda: b"", "quarantined", "0-byte"),
    Case("text_named_png", lambda: b"this is not an image at all\n", "quarantined", "not a readable image"),
    Case("bomb_header", lambda: png_raw(100_000, 100_000, 8, 2, 3), "quarantined",
         "above the limit|decompression bomb|exceeds limit"),
    Case("i16", _i16, "quarantined", "16-bit"),
    Case("rgb48", lambda: png_raw(W, H, 16, 2, 3), "quarantined", "16-bit"),
    Case("rgba64", lambda: png_raw(W, H, 16, 6, 4), "quarantined", "16-bit"),
    Case("la32", lambda: png_raw(W, H, 16, 4, 2), "quarantined", "16-bit"),
    Case("gif_animated", _gif, "quarantined", "animated", suffix="gif"),
    Case("apng_animated", _apng, "quarantined", "animated"),
]
BYTE = {c.name: c for c in BYTE_CASES}


def secret_file(folder: Path) -> Path:
    """A private picture outside every source: what a hostile path-only entry points at."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "private.png"
    path.write_bytes(encode(Image.fromarray(gradient(seed=99))))
    return path


def path_only_entries(secret: Path) -> dict[str, dict[str, Any]]:
    """``{"bytes": None, "path": ...}`` entries a shard or Hub dataset may carry: an existing file
    outside the source, a missing one (same reason: nothing tells whether a path exists) and a
    relative ``..`` escape."""
    return {"path_only_existing": {"bytes": None, "path": str(secret)},
            "path_only_missing": {"bytes": None, "path": str(secret.parent / "no-such-file.png")},
            "path_only_escape": {"bytes": None, "path": f"../../../../../../../../..{secret}"}}


def image_struct(data: bytes | None, path: str | None) -> dict[str, Any]:
    return {"bytes": data, "path": path}


# ------------------------------------------------------------------------- tar members
def add_member(tar: tarfile.TarFile, name: str, data: bytes | None = None, *, kind: bytes = tarfile.REGTYPE,
               linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, linkname, 1_650_000_000
    if data is None:
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def hostile_tar(path: Path) -> dict[str, str]:
    """A WebDataset shard with every byte case as a sample plus the tar-only cases; returns
    ``{member or key: reason regex}`` of what must be quarantined (the rest is protected)."""
    quarantined: dict[str, str] = {}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for case in BYTE_CASES:
            add_member(tar, f"{case.name}.{case.suffix}", case.make())
            add_member(tar, f"{case.name}.txt", f"caption of {case.name}".encode())
            if not case.protected:
                quarantined[case.name] = case.reason
        good = _rgb()
        add_member(tar, "../evil.png", good)
        quarantined["../evil"] = "unsafe name.*'\\.\\.' step"
        add_member(tar, "/tmp/evil.png", good)
        quarantined["/tmp/evil"] = "unsafe name.*absolute path"
        add_member(tar, "notes.txt", kind=tarfile.SYMTYPE, linkname="/etc/shadow")
        quarantined["notes"] = "symbolic link.*/etc/shadow"
        add_member(tar, "linked.png", good)
        add_member(tar, "linked.json", kind=tarfile.LNKTYPE, linkname="rgb.txt")
        quarantined["linked"] = "hard link"
        add_member(tar, "fifo.bin", kind=tarfile.FIFOTYPE)
        quarantined["fifo"] = "fifo|special"
        # two images of one sample that would both become twin.png (issue 20 item 1)
        add_member(tar, "twin.jpg", encode(Image.fromarray(gradient(seed=1)), "JPEG"))
        add_member(tar, "twin.jpeg", encode(Image.fromarray(gradient(seed=2)), "JPEG"))
        quarantined["twin"] = "'twin.jpg' and 'twin.jpeg' would both be written as 'twin.png'"
        add_member(tar, "pair.webp", encode(Image.fromarray(gradient(seed=3)), "WEBP", lossless=True))
        add_member(tar, "pair.bmp", encode(Image.fromarray(gradient(seed=4)), "BMP"))
        quarantined["pair"] = "would both be written as 'pair.png'"
        for name, (_, reason) in UNPROTECTED_FORMATS.items():  # images it cannot protect (issue 20 item 3)
            add_member(tar, name, unprotected_format_payload(name))
            add_member(tar, name.split(".")[0] + ".txt", b"its caption")
            quarantined[name.split(".")[0]] = reason
        add_member(tar, "loose-no-key", encode(Image.fromarray(gradient(seed=6)), "JPEG"))  # image bytes, no key
        quarantined["loose-no-key"] = "holds JPEG image bytes"
        add_member(tar, "dup.png", good)  # duplicate keys: two samples named dup, both protected
        add_member(tar, "sep.txt", b"between")
        add_member(tar, "dup.png", encode(Image.fromarray(gradient(seed=5))))
    return quarantined


# ------------------------------------------------------------------- tables with a second image column
def image_features_metadata(**features: dict) -> dict[bytes, bytes]:
    """Arrow schema metadata naming Hugging Face features (``{"_type": "Image"}`` per image column)."""
    import json

    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def two_image_columns_table(kind: str) -> Any:
    """A table with ``image`` and a second image-like column ``thumb`` (issue 20 item 2):
    ``features``: two ``Image`` features; ``struct``: a ``{bytes, path}`` struct without metadata;
    ``list``: a list of ``Image`` structs; ``binary``: plain bytes, a PNG in row 1 only; ``base64``:
    strings, base64 of a PNG in row 1 and a ``data:image/png`` URI in row 2; ``nested``: a struct
    whose inner ``blob`` field holds a PNG in row 1."""
    import pyarrow as pa

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = [{"bytes": encode(Image.fromarray(gradient(seed=i))), "path": f"{i}.png"} for i in range(3)]
    thumbs = [{"bytes": encode(Image.fromarray(gradient(4, 4, seed=10 + i))), "path": f"t{i}.png"} for i in range(3)]
    ids = pa.array(["a", "b", "c"])
    if kind == "features":
        meta = image_features_metadata(id={"dtype": "string", "_type": "Value"}, image={"_type": "Image"},
                                       thumb={"_type": "Image"})
        return pa.table({"id": ids, "image": pa.array(images, struct), "thumb": pa.array(thumbs, struct)}).replace_schema_metadata(meta)
    if kind == "struct":
        return pa.table({"id": ids, "image": pa.array(images, struct), "thumb": pa.array(thumbs, struct)})
    if kind == "list":
        return pa.table({"id": ids, "image": pa.array(images, struct),
                         "thumb": pa.array([[t] for t in thumbs], pa.list_(struct))})
    if kind == "base64":
        import base64

        text = ["a caption that is only text", base64.b64encode(thumbs[1]["bytes"]).decode(),
                "data:image/png;base64," + base64.b64encode(thumbs[2]["bytes"]).decode()]
        return pa.table({"id": ids, "image": pa.array(images, struct), "thumb": pa.array(text)})
    blobs = [b"\x00\x01 not an image", thumbs[1]["bytes"], b"BM but no bitmap header"]
    if kind == "nested":
        inner = pa.struct([("meta", pa.struct([("blob", pa.binary()), ("note", pa.string())]))])
        return pa.table({"id": ids, "image": pa.array(images, struct),
                         "thumb": pa.array([{"meta": {"blob": b, "note": "n"}} for b in blobs], inner)})
    return pa.table({"id": ids, "image": pa.array(images, struct), "thumb": pa.array(blobs, pa.binary())})


def truncated_tar(path: Path) -> None:
    """A tar cut in the middle of a member: the shard cannot be read at all (a failed shard)."""
    full = path.with_suffix(".full")
    with tarfile.open(full, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(3):
            add_member(tar, f"s{i}.png", encode(Image.fromarray(gradient(64, 64, seed=i))))
    with tarfile.open(full) as tar:
        last = tar.getmembers()[-1]
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: last.offset_data + last.size // 2])


# ----------------------------------------------------------------------- pickled weights
PAYLOAD = """import pathlib; pathlib.Path({marker!r}).write_text('pwned')"""


class _Payload:
    """Unpickling this runs ``exec(code)``: what a hostile ``.bin`` / ``.pth`` checkpoint does."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def pickle_surrogate(folder: Path, marker: Path) -> Path:
    """A surrogate folder whose weights are pickles with a payload that would write ``marker``."""
    import json
    import pickle

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "sample_size": 16}))
    (folder / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    payload = pickle.dumps(_Payload(PAYLOAD.format(marker=str(marker))))
    for name in ("diffusion_pytorch_model.bin", "pytorch_model.bin", "model.pth"):
        (folder / name).write_bytes(payload)
    return folder
