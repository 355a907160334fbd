"""Shard sources: WebDataset tars and Parquet files, found, opened and read in order.

A *shard* is one file of a sharded dataset and the unit of work of
:mod:`udp_datasets.runner`. This module finds shards and reads them without
changing a byte of what is not an image:

- :func:`discover_shards` turns SRC into an ordered list of :class:`Shard`: a
  ``.tar`` / ``.tar.gz`` / ``.tgz`` / ``.parquet`` file, a brace pattern
  (``data-{000000..000099}.tar``, expanded with ``braceexpand`` as webdataset
  does, ``::`` joins several), a glob, a folder (searched recursively; hidden
  folders and ``__*__`` folders are skipped) or a URL that ``webdataset.gopen``
  opens (``http(s)://``, ``pipe:...``, ``file://``, ...). Each shard's *name* is
  its path relative to the folder (or its base name), and the output keeps it.
- :func:`iter_tar_samples` reads a tar as a stream (``tarfile`` mode ``r|*``,
  members dropped as soon as they are read, so memory does not grow with the
  shard) and groups consecutive members into samples by the WebDataset key rule
  (:func:`split_key`). Every member keeps its ``TarInfo`` (name, mode, owner,
  mtime, pax headers) and exact bytes.
- :func:`iter_parquet_batches` reads a Parquet file by record batches within
  each row group (pyarrow), so a shard is never loaded whole.

The stdlib ``tarfile`` is used rather than webdataset's tar iterators because
those drop non-regular members, ``__meta__`` files and member metadata, which the
output must keep.
"""

from __future__ import annotations

import glob
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence
from urllib.parse import urlparse

from .hf import SourceError, is_saved_dataset
from .keys import (IMAGE_EXTENSIONS, SHARD_SUFFIXES, ShardKind, is_image_extension, shard_kind,
                   split_key)

_BRACE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")


@dataclass(frozen=True)
class Shard:
    """One input file: ``url`` is what is opened, ``name`` the relative output name."""

    url: str
    name: str
    kind: ShardKind

    @property
    def compressed(self) -> bool:
        return self.name.endswith((".tar.gz", ".tgz"))




def is_url(src: str) -> bool:
    return src.startswith("pipe:") or bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", src))


def has_braces(src: str) -> bool:
    return bool(_BRACE.search(src))


def looks_like_shards(src: str) -> bool:
    """Whether SRC names shard files (a tar/parquet path, pattern, URL or folder of them).

    Folders that are ``save_to_disk`` datasets, or that hold no tar/parquet file, are
    not shard sources (they go through the ``datasets`` path of the CLI).
    """
    if "::" in src or has_braces(src) or is_url(src):
        return True
    if any(ch in src for ch in "*?[") and not Path(src).exists():
        return any(shard_kind(p) for p in glob.glob(os.path.expanduser(src)))
    path = Path(src).expanduser()
    if path.is_file():
        return shard_kind(path.name) is not None
    if path.is_dir() and not is_saved_dataset(path):
        return next(_walk_shards(path), None) is not None
    return False


def discover_shards(src: str | os.PathLike | Sequence[str]) -> list[Shard]:
    """The ordered, de-duplicated list of shards that SRC names (see module docstring).

    Raises :class:`SourceError` when SRC names nothing, something that is not a
    shard, or two shards that would get the same output name.
    """
    specs: list[str] = [str(s) for s in src] if isinstance(src, (list, tuple)) else [str(src)]
    shards: list[Shard] = []
    for spec in specs:
        for part in spec.split("::"):
            shards.extend(_expand_one(part.strip()))
    if not shards:
        raise SourceError(f"{src}: no .tar or .parquet shard found")
    seen: dict[str, Shard] = {}
    for shard in shards:
        other = seen.get(shard.name)
        if other is not None and other.url != shard.url:
            raise SourceError(f"two shards would both be written as {shard.name!r}: {other.url} and "
                              f"{shard.url}; give them distinct file names")
        seen.setdefault(shard.name, shard)
    return list(seen.values())


def _expand_braces(spec: str) -> list[str]:
    if "{" not in spec:
        return [spec]
    try:
        import braceexpand
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SourceError(f"{spec}: brace patterns need braceexpand: pip install 'udp-datasets[wds]'") from exc
    return list(braceexpand.braceexpand(spec))


def _expand_one(spec: str) -> list[Shard]:
    if not spec:
        return []
    out: list[Shard] = []
    for item in _expand_braces(spec):
        if is_url(item) and not item.startswith("file://"):
            name = _url_basename(item)
            kind = shard_kind(name)
            if kind is None:
                raise SourceError(f"{item}: cannot tell the shard type from the name; shard URLs must "
                                  f"end in one of {', '.join(SHARD_SUFFIXES)}")
            out.append(Shard(url=item, name=name, kind=kind))
            continue
        local = urlparse(item).path if item.startswith("file://") else item
        path = Path(local).expanduser()
        if path.is_dir():
            found = sorted(_walk_shards(path), key=lambda p: p.relative_to(path).as_posix())
            if not found:
                raise SourceError(f"{item} is a folder without .tar or .parquet files")
            out.extend(Shard(url=str(p), name=p.relative_to(path).as_posix(),
                             kind=shard_kind(p.name))  # type: ignore[arg-type]
                       for p in found)
        elif path.is_file():
            kind = shard_kind(path.name)
            if kind is None:
                raise SourceError(f"{item} is not a shard file (expected {', '.join(SHARD_SUFFIXES)})")
            out.append(Shard(url=str(path), name=path.name, kind=kind))
        elif any(ch in local for ch in "*?["):
            matches = sorted(p for p in glob.glob(os.path.expanduser(local)) if shard_kind(p))
            if not matches:
                raise SourceError(f"{item} matches no .tar or .parquet file")
            out.extend(Shard(url=p, name=Path(p).name, kind=shard_kind(p)) for p in matches)  # type: ignore[arg-type]
        else:
            raise SourceError(f"shard {item} does not exist")
    return out


def _walk_shards(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.startswith("__"))
        for name in sorted(filenames):
            if not name.startswith(".") and shard_kind(name):
                yield Path(dirpath) / name


def _url_basename(url: str) -> str:
    if url.startswith("pipe:"):
        tokens = [t for t in url[5:].split() if not t.startswith("-")]
        return PurePosixPath(urlparse(tokens[-1]).path if tokens else "").name
    return PurePosixPath(urlparse(url).path).name


def open_binary(url: str):
    """Open a shard for reading: a local path directly, anything else with ``webdataset.gopen``."""
    if not is_url(url):
        return open(url, "rb")
    if url.startswith("file://"):
        return open(urlparse(url).path, "rb")
    try:
        from webdataset.gopen import gopen
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SourceError(f"{url}: URLs are opened with webdataset: pip install 'udp-datasets[wds]'") from exc
    return gopen(url, "rb")


# ------------------------------------------------------------------ WebDataset tars




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
            data = stream.extractfile(info).read() if info.isreg() else None  # type: ignore[union-attr]
            stream.members = []  # keep memory flat: tarfile would remember every header
            key, _ = split_key(info.name)
            base = info.name.rsplit("/", 1)[-1]
            image = "." in base and is_image_extension(base.rsplit(".", 1)[1], image_extensions)
            meta = "/" not in info.name and info.name.startswith("__") and info.name.endswith("__")
            if key is None or meta:
                if current is not None:
                    yield current
                    current = None
                sample = TarSample(key=None, members=[TarMember(info, data)])
                if image:  # an image that is part of no sample: never pass it through
                    sample.problem = (f"member {info.name!r} looks like an image but has no WebDataset "
                                      "key (its base name starts with a dot or has none)")
                    sample.images = [0]
                yield sample
                continue
            if current is None or current.key != key:
                if current is not None:
                    yield current
                current = TarSample(key=key)
            current.members.append(TarMember(info, data))
            if image:
                current.images.append(len(current.members) - 1)
                if data is None and current.problem is None:
                    current.problem = f"image member {info.name!r} is a {_kind(info)}, not a file"
        if current is not None:
            yield current
        stream.close()
    except tarfile.TarError as exc:
        raise ShardReadError(f"{url}: not a readable tar archive ({exc})") from exc
    finally:
        fh.close()


class ShardReadError(IOError):
    """A shard that cannot be read at all (truncated or corrupt container)."""


def _kind(info: tarfile.TarInfo) -> str:
    if info.isdir():
        return "folder"
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    return "special file"


# ------------------------------------------------------------------ Parquet
def open_parquet(url: str):
    import pyarrow.parquet as pq

    if not is_url(url):
        return pq.ParquetFile(url)
    if url.startswith("file://"):
        return pq.ParquetFile(urlparse(url).path)
    import fsspec

    return pq.ParquetFile(fsspec.open(url, "rb").open())


def iter_parquet_batches(pf: Any, batch_size: int) -> Iterator[tuple[int, Any]]:
    """``(row_group_index, RecordBatch)`` pairs, in file order, ``batch_size`` rows at most."""
    for group in range(pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[group], use_threads=False):
            if batch.num_rows:
                yield group, batch


def find_image_column(schema: Any, requested: str | None) -> str:
    """The image column of an Arrow schema: the requested one, else the only ``Image``
    feature in its Hugging Face metadata, else a column called ``image``, else the only
    binary column."""
    import json

    names = list(schema.names)
    if requested is not None:
        if requested not in names:
            raise SourceError(f"no image column {requested!r}; the columns are {names} (use --image-column)")
        return requested
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        try:
            features = json.loads(meta)["info"]["features"]
            images = [k for k, v in features.items() if isinstance(v, dict) and v.get("_type") == "Image"]
            if len(images) == 1:
                return images[0]
        except (ValueError, KeyError, TypeError):
            pass
    if "image" in names:
        return "image"
    import pyarrow as pa

    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if len(binary) == 1:
        return binary[0]
    raise SourceError(f"cannot tell which column holds the images among {names}; pass --image-column")
