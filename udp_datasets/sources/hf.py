"""Hugging Face ``datasets`` sources: imagefolder, save_to_disk directories, Hub ids."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class SourceError(ValueError):
    """SRC cannot be opened as a dataset, with the reason and the fix."""


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "state.json").exists() or (
        path / "dataset_dict.json").exists()


def open_source(src: str, split: str | None = None, **load_kwargs: Any):
    """Open SRC as a ``datasets.Dataset`` (a single split)."""
    import datasets

    path = Path(src).expanduser()
    if path.is_dir():
        if (path / "udp_protection.json").exists() and is_saved_dataset(path / "data"):
            path = path / "data"  # the output folder of `udp-datasets protect`
        if is_saved_dataset(path):
            ds = datasets.load_from_disk(str(path))
        else:
            if not any(p.is_file() for p in path.rglob("*")):
                raise SourceError(f"{src} is an empty folder: no images to protect")
            ds = datasets.load_dataset("imagefolder", data_dir=str(path), **load_kwargs)
    elif path.exists():
        raise SourceError(f"{src} is a file; give a folder of images, a save_to_disk folder or a Hub id")
    elif src.startswith((".", "/", "~")) or src.count("/") > 1:
        raise SourceError(f"source folder {src} does not exist")
    else:
        ds = datasets.load_dataset(src, **load_kwargs)
    return _pick_split(ds, split, src)


def _pick_split(ds: Any, split: str | None, src: str):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) == 1:
                return next(iter(ds.values()))
            raise SourceError(f"{src} has splits {sorted(ds)}; choose one with --split")
        if split not in ds:
            raise SourceError(f"{src} has no split {split!r}; splits are {sorted(ds)}")
        return ds[split]
    if split is not None and getattr(ds, "split", None) not in (None, split):
        logger.warning("%s is a single %s split; --split %s ignored", src, ds.split, split)
    return ds
