"""Shard sources: which WebDataset tars and Parquet files SRC names, in order.

A *shard* is one file of a sharded dataset and the unit of work of the shard job
(:mod:`udp_datasets.jobs.shard_job`). :func:`discover_shards` turns SRC into an ordered
list of :class:`Shard`: a ``.tar`` / ``.tar.gz`` / ``.tgz`` / ``.parquet`` file, a brace
pattern (``data-{000000..000099}.tar``, expanded with ``braceexpand`` as webdataset does,
``::`` joins several), a glob, a folder (searched recursively; hidden folders and
``__*__`` folders are skipped) or a URL (``http(s)://``, ``s3://`` ... opened with fsspec,
``pipe:CMD``, ``file://``: :mod:`udp_datasets.sources.remote`). Each shard's *name* is its path
relative to the folder (or its base name), and the output keeps it.

Reading a shard is its format's codec (:mod:`udp_datasets.formats`); a shard that cannot be read
at all raises :class:`ShardReadError`, defined here so that every format and the command line
name it without importing one another.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .errors import SourceError
from .hf import is_saved_dataset
from .keys import COMPRESSED_TAR_SUFFIXES, SHARD_SUFFIXES, ShardKind, is_image_name, shard_kind
from .remote import is_url, local_path, url_basename

_BRACE = re.compile(r"\{[^{}]*(\.\.|,)[^{}]*\}")


class ShardReadError(IOError):
    """A shard that cannot be read at all (truncated or corrupt container)."""


@dataclass(frozen=True)
class Shard:
    """One input file: ``url`` is what is opened, ``name`` the relative output name."""

    url: str
    name: str
    kind: ShardKind

    @property
    def compressed(self) -> bool:
        return self.name.endswith(COMPRESSED_TAR_SUFFIXES)


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
        first = next(_walk_shards(path), None)
        if first is not None:
            _refuse_mixed_folder(path, first)
        return first is not None
    return False


def _refuse_mixed_folder(root: Path, shard: Path) -> None:
    """A folder with shard files *and* image files is neither a shard source (its images would be
    left out) nor an image folder (its shards would be): refused, naming one of each."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and is_image_name(name):
                image = (Path(dirpath) / name).relative_to(root)
                raise SourceError(f"{root} holds shard files ({shard.relative_to(root)}) and image files ({image}); "
                                  "a folder is protected either as shards or as an image folder: move one of "
                                  "them out, or give the shards by name")


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
            name = url_basename(item)
            kind = shard_kind(name)
            if kind is None:
                raise SourceError(f"{item}: cannot tell the shard type from the name; shard URLs must "
                                  f"end in one of {', '.join(SHARD_SUFFIXES)}")
            out.append(Shard(url=item, name=name, kind=kind))
            continue
        local = local_path(item)
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

