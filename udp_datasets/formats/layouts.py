"""The images of a dataset folder, in whichever layout a protect job wrote it.

One reader serves a local output folder, a downloaded Hub snapshot (``verify``,
``publish``) and a clean source folder (``verify --source``):

* ``arrow``: ``DIR/data`` is a ``save_to_disk`` folder (``udp-datasets protect``);
* ``parquet``: Parquet data files (``data/train-*.parquet`` as published, or the shard
  job's Parquet shards), with an ``Image`` column of PNG bytes;
* ``webdataset``: ``*.tar`` shards; a sample's key is the WebDataset ``__key__``;
* ``imagefolder``: image files (+ ``metadata.jsonl``) at the source's relative paths.

A :class:`Layout` lists its data files and yields ``(location, identity, bytes)`` for every
image in order; which files are data and which are images come from
:mod:`udp_datasets.sources.keys`, a sample's key and a file's output name from the format's codec
(:mod:`~udp_datasets.formats.webdataset`, :mod:`~udp_datasets.formats.imagefolder`), and the
Parquet reading from :mod:`~udp_datasets.sources.parquet`. In :mod:`udp_datasets.formats`
because it reads every format the codecs write.

Published data is read from its bytes only: a path-only image entry in a protected folder or a
Hub snapshot is an unreadable row, never a file opened on the verifier's disk, and symbolic
links are not data files. Only a clean *local* source (``verify --source my_pictures``) may
name its files by path, and only inside its own folder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

from ..sources.errors import SourceError
from ..sources.hf import is_saved_dataset, open_source
from ..sources.keys import is_data_file, is_image_name, shard_kind
from ..sources.parquet import find_image_column, image_entries, iter_parquet_images
from .imagefolder import output_name
from .webdataset import iter_tar_images

LAYOUT_KINDS = ("webdataset", "parquet", "imagefolder")  # the file-based layouts, in detection order


class Layout:
    """A dataset folder's data files and how to iterate the images in them."""

    name = "?"
    ordered = False  # rows are in manifest order (Arrow / Parquet)

    def __init__(self, root: Path, files: list[str], image_column: str = "image"):
        self.root, self.files, self.image_column = root, files, image_column

    def iter_images(self) -> Iterator[tuple[str, str | None, bytes | None]]:
        """(location, identity, bytes) for every image; bytes None = unreadable row.
        ``identity`` is what a manifest row can name the image by (tar ``__key__`` or image
        file path); None for row-ordered layouts. A location ``shard.tar:member`` also lets a
        manifest row name the member."""
        raise NotImplementedError

    def manifest_identity(self, key: str | None, source: str | None) -> str | None:
        """The identity under which this layout stores the sample a manifest row describes."""
        return None


class ArrowLayout(Layout):
    name, ordered = "arrow", True

    def iter_images(self):
        import datasets

        ds = datasets.load_from_disk(str(self.root / "data"))
        column = find_image_column(ds.features.arrow_schema, None, self.image_column)
        for row, _, data in iter_dataset_images(ds, column):
            yield f"data row {row}", None, data


class ParquetLayout(Layout):
    name, ordered = "parquet", True

    def iter_images(self):
        for rel in self.files:
            for row, data in enumerate(iter_parquet_images(str(self.root / rel), self.image_column)):
                yield f"{rel} row {row}", None, data


class WebDatasetLayout(Layout):
    name = "webdataset"

    def iter_images(self):
        for rel in self.files:
            for member, key, data in iter_tar_images(str(self.root / rel)):
                yield f"{rel}:{member}", key, data

    def manifest_identity(self, key, source):
        return key


class ImageFolderLayout(Layout):
    name = "imagefolder"

    def iter_images(self):
        for rel in self.files:
            if is_image_name(rel):
                yield rel, rel, (self.root / rel).read_bytes()

    def manifest_identity(self, key, source):
        # protect --format imagefolder writes <source relative path>.png
        if source and not os.path.isabs(source) and "://" not in source:
            return output_name(source, 0)
        return None


LAYOUTS: dict[str, type[Layout]] = {"webdataset": WebDatasetLayout, "parquet": ParquetLayout,
                                    "imagefolder": ImageFolderLayout}


def detect_layout(directory: str | os.PathLike, image_column: str = "image") -> Layout:
    """Which layout a dataset folder holds, and its data files (relative, sorted).

    Raises :class:`~udp_datasets.sources.errors.SourceError` for a folder with no data or with
    data files of several layouts.
    """
    root = Path(directory)
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder")
    if (root / "data").is_dir() and is_saved_dataset(root / "data"):
        return ArrowLayout(root, ["data"], image_column)
    by_kind = files_by_layout(data_files(root))
    kinds = [k for k in LAYOUT_KINDS if by_kind[k]]
    if not kinds:
        raise SourceError(f"{root} holds no protected data: no data/ save_to_disk folder, tar or Parquet "
                          "shards, or image files")
    if len(kinds) > 1:
        raise SourceError(f"{root} mixes {' and '.join(kinds)} data files; verify one layout at a time")
    return LAYOUTS[kinds[0]](root, by_kind[kinds[0]], image_column)


def data_files(root: Path) -> list[str]:
    """Relative paths of the files that make up the dataset: everything except the card,
    manifests, job records, shard markers, errors, hidden and temporary files
    (:func:`~udp_datasets.sources.keys.is_data_file`), and symbolic links (a link is not
    data, and following one could read, verify and publish a file from outside the folder)."""
    out = []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and is_data_file(rel):
            out.append(rel)
    return sorted(out)


def files_by_layout(files: list[str]) -> dict[str, list[str]]:
    """Data files grouped by the layout they belong to (tar shards, Parquet files, image files
    with their ``metadata.jsonl`` / ``metadata.csv``); other files are left out."""
    by_kind: dict[str, list[str]] = defaultdict(list)
    for rel in files:
        kind = shard_kind(rel)
        if kind == "tar":
            by_kind["webdataset"].append(rel)
        elif kind == "parquet":
            by_kind["parquet"].append(rel)
        elif is_image_name(rel) or rel.rsplit("/", 1)[-1] in ("metadata.jsonl", "metadata.csv"):
            by_kind["imagefolder"].append(rel)
    return by_kind


def iter_dataset_images(ds: Any, column: str, *, root: str | os.PathLike | None = None, missing_ok: bool = True
                        ) -> Iterator[tuple[int, str | None, bytes | None]]:
    """``(row, path, bytes)`` of the image column of a ``datasets.Dataset``, read as Arrow
    (no decoding); bytes None = no readable image (a path-only entry outside ``root``)."""
    row = 0
    for batch in ds.with_format("arrow").select_columns([column]).iter(batch_size=256):
        for data, path in image_entries(batch.column(0), root=root, missing_ok=missing_ok):
            yield row, path, data
            row += 1


def iter_source_images(source: str, split: str | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, original bytes) of every image in a clean source: a folder of tar shards, or of
    Parquet files (and no images), or anything :func:`~udp_datasets.sources.open_source` opens
    (image folder, ``save_to_disk`` folder, Hub id). A local folder's path-only entries are read
    inside that folder only; a Hub source's are not read (the row is skipped)."""
    path = Path(source).expanduser()
    if path.is_dir() and not is_saved_dataset(path):
        files = data_files(path)
        by_kind = files_by_layout(files)
        shards: Layout | None = None
        if by_kind["webdataset"]:
            shards = WebDatasetLayout(path, by_kind["webdataset"])
        elif by_kind["parquet"] and not any(is_image_name(f) for f in files):
            shards = ParquetLayout(path, by_kind["parquet"])
        if shards is not None:
            yield from ((location, data) for location, _, data in shards.iter_images() if data)
            return
    ds = open_source(source, split=split)
    column = find_image_column(ds.features.arrow_schema, None, "image")
    root = path if path.is_dir() else None
    for row, name, data in iter_dataset_images(ds, column, root=root):
        if data is not None:
            yield name or f"row {row}", data


__all__ = ["ArrowLayout", "ImageFolderLayout", "Layout", "ParquetLayout", "WebDatasetLayout", "data_files",
           "detect_layout", "files_by_layout", "iter_dataset_images", "iter_source_images"]
