"""Image folders: which files the reader skips, the output names, and writing PNG files, in one codec.

Part of :mod:`udp_datasets.formats` (see :mod:`~udp_datasets.formats.codec`). An image
folder is read by ``datasets`` (``load_dataset("imagefolder")``, :mod:`udp_datasets.sources.hf`)
and written by :func:`save_imagefolder` (``protect --format imagefolder``).

**Reading.** ``datasets`` reads an image folder by extension: an AVIF, HEIC or JPEG XL photo, or
PNG bytes named ``.dat``, is skipped without a word. A protect job must not pretend those were
protected: :func:`skipped_images` finds them (by extension and by content, the rules in
:mod:`udp_datasets.sources.keys`) so the job records each as quarantined, with its reason.

**Key rule and output names.** A file is named by its path relative to the folder; its protected
copy keeps that path with the ``.png`` extension (:func:`output_name`, over
:func:`~udp_datasets.formats.codec.png_name`), which is also how ``verify`` finds it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..sources.keys import image_format, is_data_file, shard_kind, unreadable_format
from .codec import png_name


def folder_extensions() -> frozenset[str]:
    """The extensions ``load_dataset("imagefolder")`` reads (``.png``, ...), lower case."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(e.lower() for e in ImageFolder.EXTENSIONS)


def skipped_images(root: str | os.PathLike) -> list[tuple[str, str]]:
    """``(relative path, reason)`` of every file under ``root`` (hidden ones and links aside) that
    the image folder reader skips although its extension or its first bytes say image."""
    base = Path(root)
    read = folder_extensions()
    out: list[tuple[str, str]] = []
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if path.is_symlink() or not path.is_file() or not is_data_file(rel) or path.suffix.lower() in read:
            continue
        if shard_kind(rel) is not None:
            continue  # a shard inside an image folder is refused as a whole (sources.shards)
        try:
            with open(path, "rb") as fh:
                head = fh.read(32)
        except OSError:
            continue
        foreign = unreadable_format(rel, head)
        if foreign is not None:
            out.append((rel, f"{foreign[0]} image data, a format this tool does not protect (reading it needs "
                             f"{foreign[1]}); it is left out: convert it to PNG or JPEG first"))
        elif image_format(head) is not None:
            out.append((rel, f"holds {image_format(head)} image bytes but its extension is not one an image folder "
                             "reads; it is left out: rename it"))
    return out


def save_imagefolder(ds: Any, directory: Path, image_column: str = "image",
                     path_column: str | None = None) -> None:
    """Write each image as PNG plus ``metadata.jsonl`` for the other columns.

    File names keep the source's relative path with a ``.png`` extension when the
    source had paths (``path_column`` holds them), else ``{row:08d}.png``; the
    result loads back with ``load_dataset("imagefolder", data_dir=...)``.
    """
    import datasets

    ds = ds.cast_column(image_column, datasets.Image(decode=False))
    others = [c for c in ds.column_names if c not in (image_column, path_column)]
    used: set[str] = set()
    with open(directory / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for row, example in enumerate(tqdm(ds, desc="write PNG files", unit="img")):
            rel = output_name(example.get(path_column) if path_column else None, row)
            if rel in used:
                rel = f"{Path(rel).with_suffix('')}-{row:08d}.png"
            used.add(rel)
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(example[image_column]["bytes"])
            record = {"file_name": rel}
            record.update({c: _jsonable(example[c]) for c in others})
            meta.write(json.dumps(record, ensure_ascii=False) + "\n")


def output_name(source_path: str | None, row: int) -> str:
    """Where the protected copy of an image-folder file goes: its relative source path as PNG
    (``a/b.jpg`` -> ``a/b.png``, a leading ``/`` dropped), ``{row:08d}.png`` without a path."""
    if not source_path:
        return f"{row:08d}.png"
    return png_name(Path(source_path).as_posix()).lstrip("/")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return value
