"""Write a protected dataset as an Arrow (``save_to_disk``) folder or as PNG files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


def save_dataset(ds: Any, directory: Path) -> None:
    """``save_to_disk`` into ``directory`` (which the caller makes atomic)."""
    ds.save_to_disk(str(directory))


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
            rel = _relative_name(example.get(path_column) if path_column else None, row)
            if rel in used:
                rel = f"{Path(rel).with_suffix('')}-{row:08d}.png"
            used.add(rel)
            target = directory / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(example[image_column]["bytes"])
            record = {"file_name": rel}
            record.update({c: _jsonable(example[c]) for c in others})
            meta.write(json.dumps(record, ensure_ascii=False) + "\n")


def _relative_name(source_path: str | None, row: int) -> str:
    if not source_path:
        return f"{row:08d}.png"
    return str(Path(source_path).with_suffix(".png")).lstrip("/")


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    return value
