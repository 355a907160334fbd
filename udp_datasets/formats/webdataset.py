"""WebDataset tar shards: reading, the key rule, the output names and deterministic writing, in one codec.

Part of :mod:`udp_datasets.formats` (see :mod:`~udp_datasets.formats.codec`): everything the
tar format means to this package lives here, so a reader of the tar rules reads one module.

**Reading.** :func:`iter_tar_samples` reads a tar as a stream (``tarfile`` mode ``r|*``, members
dropped as soon as they are read, so memory does not grow with the shard) and groups
consecutive members into samples by the WebDataset key rule (:func:`split_key`). Every member
keeps its ``TarInfo`` (name, mode, owner, mtime, pax headers) and exact bytes, so the shard job
can copy what is not an image unchanged. :func:`iter_tar_images` gives only the image files of
keyed samples (what ``verify`` hashes). The stdlib ``tarfile`` is used rather than webdataset's
tar iterators because those drop non-regular members, ``__meta__`` files and member metadata,
which the output must keep.

Hostile members are never passed through: a member whose name would extract outside the
output folder (``../x.png``, ``/tmp/x.png``), a symbolic or hard link (``notes.txt ->
/etc/shadow`` would publish whatever the link reaches on a reader's disk) and a device or
FIFO give their sample a ``problem`` (:func:`member_problem`), so the shard job quarantines
the sample whole, with the reason, and copies none of its members. So does a member that is an
image the job does not protect, by extension or by content (AVIF, HEIC, JPEG XL, ... or PNG bytes
named ``.bin``: :func:`unprotected_image`): copied, it would go out unprotected.

**Output names.** A protected image member ``KEY.jpg`` is written as ``KEY.png``
(:func:`~udp_datasets.formats.codec.png_name`); a sample whose members would then share a name is
quarantined (:func:`rename_clash`).

**Writing.** :class:`TarShardWriter` writes deterministic tars: a resumed shard job must write
exactly what an uninterrupted one writes, and the published shards must keep every non-image
member as it was. So it uses the stdlib ``tarfile`` in POSIX pax format, copies each member's
original ``TarInfo`` (name, mode, uid/gid, owner names, mtime, pax headers) from the input, keeps
input order and adds no timestamps of its own; ``.tar.gz`` / ``.tgz`` are gzip-ed with ``mtime=0``
and no file name. webdataset's ``TarWriter`` stamps members with the current time and its own
owner fields, and its ``ShardWriter`` writes straight to the final name, so neither is used. The
writer writes to whatever path it is given; the shard job gives it a temporary from
:func:`udp_datasets.sinks.atomic.atomic_file`, which fsyncs and renames it into place.
"""


from __future__ import annotations

import contextlib
import copy
import gzip
import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..sources.keys import IMAGE_EXTENSIONS, image_format, is_image_name, unreadable_format, unsafe_name
from ..sources.remote import open_binary
from ..sources.shards import ShardReadError
from .codec import MAX_CHUNK_BYTES, MAX_CHUNK_SAMPLES, Chunk, ShardCodec, WorkUnit, png_name

_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset.tariterators.base_plus_ext


def split_key(name: str) -> tuple[str | None, str | None]:
    """WebDataset's key rule: ``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``).

    The key is everything before the *first* dot of the base name, so a key can
    never contain a dot: a member ``img.v2.jpg`` is key ``img`` with extension
    ``v2.jpg``. Names without a dot (or starting with one) belong to no sample.
    """
    match = _KEY_RE.match(name)
    if not match:
        return None, None
    return match.group(1), match.group(2)


MAX_MEMBER_BYTES = 1 << 30
"""The largest member read into memory (1 GiB): the tar header gives a member's size before its
data, so a bigger one (a gzip member that inflates to more than memory holds) is skipped unread
and its sample quarantined, never a MemoryError."""


@dataclass
class TarMember:
    info: tarfile.TarInfo
    data: bytes | None  # None for members that are not regular files


@dataclass
class TarSample:
    """Consecutive members sharing a WebDataset key, in archive order.

    ``key`` is ``None`` for members that belong to no sample (folders, names
    without a dot, ``__meta__`` files): they are copied through unchanged.
    ``images`` indexes the members that hold images; ``problem`` says why the
    sample cannot be protected (it is then quarantined as a whole).
    """

    key: str | None
    members: list[TarMember] = field(default_factory=list)
    images: list[int] = field(default_factory=list)
    problem: str | None = None


def iter_tar_samples(url: str, image_extensions: frozenset[str] = IMAGE_EXTENSIONS) -> Iterator[TarSample]:
    """Samples of one tar shard in archive order (see :class:`TarSample`).

    Streams the archive: memory holds one sample at a time.
    """
    fh = open_binary(url)
    try:
        stream = tarfile.open(fileobj=fh, mode="r|*")
        current: TarSample | None = None
        for info in stream:
            too_big = info.isreg() and info.size > MAX_MEMBER_BYTES
            data = stream.extractfile(info).read() if info.isreg() and not too_big else None  # type: ignore[union-attr]
            stream.members = []  # keep memory flat: tarfile would remember every header
            key, _ = split_key(info.name)
            image = is_image_name(info.name, image_extensions)
            problem = member_problem(info) or (
                f"member {info.name!r} is {info.size:,} bytes, more than the {MAX_MEMBER_BYTES:,} a member may "
                "hold in memory; it was skipped unread" if too_big else
                None if image else unprotected_image(info.name, data))
            meta = "/" not in info.name and info.name.startswith("__") and info.name.endswith("__")
            if key is None or meta:
                if current is not None:
                    yield current
                    current = None
                yield _loose_member(info, data, image, problem)
                continue
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = TarSample(key=key)
            current.members.append(TarMember(info, data))
            if image:
                current.images.append(len(current.members) - 1)
                if data is None and current.problem is None and unsafe_name(info.name) is None and not too_big:
                    current.problem = f"image member {info.name!r} is a {_member_kind(info)}, not a file"
            if current.problem is None and problem is not None:
                current.problem = problem
        if current is not None:
            yield current
        stream.close()
    except tarfile.TarError as exc:
        raise ShardReadError(f"{url}: not a readable tar archive ({exc})") from exc
    finally:
        fh.close()


def iter_tar_images(url: str) -> Iterator[tuple[str, str, bytes]]:
    """``(member name, sample key, bytes)`` of every image file that belongs to a sample, in
    archive order; members without a key and image entries that are not files are skipped."""
    for sample in iter_tar_samples(url):
        if sample.key is None:
            continue
        for index in sample.images:
            member = sample.members[index]
            if member.data is not None:
                yield member.info.name, sample.key, member.data


def _loose_member(info: tarfile.TarInfo, data: bytes | None, image: bool, problem: str | None) -> TarSample:
    """A member that belongs to no sample; an image among them is never passed through."""
    sample = TarSample(key=None, members=[TarMember(info, data)], problem=problem)
    if image:
        sample.problem = sample.problem or (f"member {info.name!r} looks like an image but has no WebDataset "
                                            "key (its base name starts with a dot or has none)")
        sample.images = [0]
    return sample


def unprotected_image(name: str, data: bytes | None) -> str | None:
    """Why a member that is not one of the job's image members may still not be copied: its
    extension or its bytes say it is an image (:func:`~udp_datasets.sources.keys.unreadable_format`,
    :func:`~udp_datasets.sources.keys.image_format`), which would go out unprotected."""
    foreign = unreadable_format(name, data)
    if foreign is not None:
        fmt, reader = foreign
        return (f"member {name!r} is {fmt} image data, a format this tool does not protect (reading it needs "
                f"{reader}); it is not copied unprotected: convert it to PNG or JPEG first")
    fmt = image_format(data)
    if fmt is not None:
        ext = name.rsplit("/", 1)[-1].rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""
        return (f"member {name!r} holds {fmt} image bytes but {('.' + ext) if ext else 'its name'} is not an "
                "image extension of this job; it is not copied unprotected (give the extension to --image-ext "
                "to protect it, or rename it)")
    return None


def member_problem(info: tarfile.TarInfo) -> str | None:
    """Why a member may never be copied into an output shard (see the module docstring), or None."""
    unsafe = unsafe_name(info.name)
    if unsafe is not None:
        return f"member {info.name!r} has an unsafe name ({unsafe}); it is not copied"
    if info.issym() or info.islnk():
        return (f"member {info.name!r} is a {_member_kind(info)} (to {info.linkname!r}); links are not copied "
                "into the output, where they could reach files outside it")
    if not (info.isreg() or info.isdir()):
        return f"member {info.name!r} is a {_member_kind(info)}; only files and folders are copied"
    return None


def _member_kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "folder"
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    return "special file"


class TarCodec(ShardCodec):
    """WebDataset tar shards: samples grouped by key, members copied or re-encoded."""

    def __init__(self, unit: WorkUnit, batch_size: int, image_extensions: frozenset[str]):
        assert unit.shard is not None
        self.unit = unit
        self.batch_size = batch_size
        self.image_extensions = image_extensions
        self.writer: TarShardWriter | None = None

    def chunks(self) -> Iterator[Chunk]:
        pending: list[Any] = []
        n_images = n_bytes = 0
        for sample in iter_tar_samples(self.unit.shard.url, self.image_extensions):  # type: ignore[union-attr]
            pending.append(sample)
            n_images += len(sample.images)
            n_bytes += sum(len(m.data or b"") for m in sample.members)
            if n_images >= self.batch_size or n_bytes >= MAX_CHUNK_BYTES or len(pending) >= MAX_CHUNK_SAMPLES:
                yield self._chunk(pending)
                pending, n_images, n_bytes = [], 0, 0
        if pending:
            yield self._chunk(pending)

    def _chunk(self, samples: list[Any]) -> Chunk:
        chunk = Chunk(record_keys=[], images=[], record_of_image=[], image_keys=[], image_names=[],
                      records=samples)
        for i, sample in enumerate(samples):
            chunk.record_keys.append(sample.key if sample.key is not None else
                                     (sample.members[0].info.name if sample.images or sample.problem else None))
            problem = sample.problem if sample.problem is not None else rename_clash(sample)
            if problem is not None:
                chunk.problems[i] = problem
            for j in sample.images:
                name = sample.members[j].info.name
                ext = split_key(name)[1] or name
                chunk.images.append(sample.members[j].data)
                chunk.record_of_image.append(i)
                single = len(sample.images) == 1 and sample.key is not None
                chunk.image_keys.append(sample.key if single else f"{sample.key}.{ext}")  # type: ignore[union-attr]
                chunk.image_names.append(name)
        return chunk

    def open(self, tmp: Path) -> None:
        self.writer = TarShardWriter(tmp, compress=self.unit.shard.compressed)  # type: ignore[union-attr]

    def write(self, chunk: Chunk, ok: list[bool], pngs: list[bytes | None]) -> None:
        assert self.writer is not None
        image_at = 0
        for i, sample in enumerate(chunk.records):
            n = len(sample.images)
            mine = pngs[image_at:image_at + n]
            image_at += n
            if not ok[i]:
                continue
            replaced = dict(zip(sample.images, mine))
            for j, member in enumerate(sample.members):
                if j in replaced:
                    png = replaced[j]
                    assert png is not None  # an ok sample has every image protected
                    self.writer.add_renamed(member.info, png_name(member.info.name), png)
                else:
                    self.writer.add(member.info, member.data)


def rename_clash(sample: Any) -> str | None:
    """Why a sample cannot be written: two members that would get one output name. An image
    ``KEY.jpg`` becomes ``KEY.png``, so ``KEY.jpg`` beside ``KEY.png``, or ``KEY.jpg`` beside
    ``KEY.jpeg`` (``.webp`` beside ``.bmp``...), or a member name repeated inside one sample,
    would write two members of the same name (readers keep one, or fail: "Duplicate field")."""
    images = set(sample.images)
    seen: dict[str, str] = {}
    for j, member in enumerate(sample.members):
        name = member.info.name
        out = png_name(name) if j in images else name
        if out in seen:
            first = seen[out]
            if first == name:
                return f"the sample has two members named {name!r}; the output cannot hold both"
            return (f"{first!r} and {name!r} would both be written as {out!r} (images become PNG); "
                    "give them distinct names")
        seen[out] = name
    return None


class TarShardWriter:
    """Append members to a tar (optionally gzip) deterministically; see the module docstring."""

    def __init__(self, path: str | os.PathLike, compress: bool = False):
        self.path = Path(path)
        self._raw = open(self.path, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0) if compress else None
        self._tar = tarfile.open(fileobj=self._gz or self._raw, mode="w", format=tarfile.PAX_FORMAT,
                                 encoding="utf-8")

    def add(self, info: tarfile.TarInfo, data: bytes | None) -> None:
        """Copy a member through unchanged (header fields and bytes)."""
        if data is None:
            self._tar.addfile(info)
        else:
            self._tar.addfile(info, io.BytesIO(data))

    def add_renamed(self, info: tarfile.TarInfo, name: str, data: bytes) -> None:
        """Write ``data`` under ``name`` with the rest of ``info``'s header (mode, owner, mtime)."""
        new = copy.copy(info)
        new.name = name
        new.size = len(data)
        # a stale pax "path"/"size" would override the new values when the header is written
        new.pax_headers = {k: v for k, v in info.pax_headers.items() if k not in ("path", "size")}
        self._tar.addfile(new, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        if self._gz is not None:
            self._gz.close()
        self._raw.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
