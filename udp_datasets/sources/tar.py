"""WebDataset tar shards, read as a stream, sample by sample.

:func:`iter_tar_samples` reads a tar as a stream (``tarfile`` mode ``r|*``, members
dropped as soon as they are read, so memory does not grow with the shard) and groups
consecutive members into samples by the WebDataset key rule
(:func:`udp_datasets.sources.keys.split_key`). Every member keeps its ``TarInfo`` (name,
mode, owner, mtime, pax headers) and exact bytes, so the shard job can copy what is not
an image unchanged. :func:`iter_tar_images` gives only the image files of keyed samples
(what ``verify`` hashes).

The stdlib ``tarfile`` is used rather than webdataset's tar iterators because those drop
non-regular members, ``__meta__`` files and member metadata, which the output must keep.

Hostile members are never passed through: a member whose name would extract outside the
output folder (``../x.png``, ``/tmp/x.png``), a symbolic or hard link (``notes.txt ->
/etc/shadow`` would publish whatever the link reaches on a reader's disk) and a device or
FIFO give their sample a ``problem`` (:func:`member_problem`), so the shard job quarantines
the sample whole, with the reason, and copies none of its members. So does a member that is an
image the job does not protect, by extension or by content (AVIF, HEIC, JPEG XL, ... or PNG bytes
named ``.bin``: :func:`unprotected_image`): copied, it would go out unprotected.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from .keys import IMAGE_EXTENSIONS, image_format, is_image_name, split_key, unreadable_format, unsafe_name
from .remote import open_binary


MAX_MEMBER_BYTES = 1 << 30
"""The largest member read into memory (1 GiB): the tar header gives a member's size before its
data, so a bigger one (a gzip member that inflates to more than memory holds) is skipped unread
and its sample quarantined, never a MemoryError."""


class ShardReadError(IOError):
    """A shard that cannot be read at all (truncated or corrupt container)."""


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
