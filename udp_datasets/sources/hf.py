"""Hugging Face ``datasets`` sources: imagefolder, save_to_disk directories, Hub ids."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .errors import SourceError
from .keys import RECORD_FILE

logger = logging.getLogger(__name__)


def is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").exists() or (path / "state.json").exists() or (
        path / "dataset_dict.json").exists()


def stored_column(batch: Any, column: str) -> list[Any]:
    """A column of a ``Dataset.map`` batch as stored: from datasets' ``LazyBatch``, an ``Image`` column's
    ``{"bytes", "path"}`` entries before datasets' decoder opens them (a corrupt file would fail inside
    datasets, naming no sample, and a path-only entry would be opened wherever it points); otherwise
    (plain dict batches, streaming, an ``Image(mode=...)`` that converts) the values as formatted."""
    import datasets

    table = getattr(batch, "pa_table", None)
    feature = (getattr(getattr(batch, "formatter", None), "features", None) or {}).get(column)
    if table is not None and isinstance(feature, datasets.Image) and feature.mode is None:
        return table.column(column).to_pylist()
    return batch[column]


def open_source(src: str, split: str | None = None, **load_kwargs: Any):
    """Open SRC as a ``datasets.Dataset`` (a single split)."""
    import datasets

    path = Path(src).expanduser()
    if path.is_dir():
        if (path / RECORD_FILE).exists() and is_saved_dataset(path / "data"):
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
    return pick_split(ds, split, src)


def pick_split(ds: Any, split: str | None, src: str):
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


def describe_source(src: str, revision: str | None = None) -> dict[str, Any]:
    """What the protect job read: ``{"id", "type", "revision", "license"}``.

    ``type`` is ``folder`` (images or shards), ``saved`` (``save_to_disk``) or ``hub``.
    For a Hub id the revision (commit) and license are looked up once, best effort (None
    offline); for a local folder the license is read from its ``README.md`` card if any.
    """
    path = Path(src).expanduser()
    info: dict[str, Any] = {"id": src, "type": None, "revision": revision, "license": None}
    if path.exists():
        info["type"] = "saved" if path.is_dir() and is_saved_dataset(path) else "folder"
        readme = path / "README.md" if path.is_dir() else None
        if readme is not None and readme.is_file():
            info["license"] = card_license(readme.read_text(encoding="utf-8"))
        return info
    info["type"] = "hub"
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return info
    try:
        from huggingface_hub import HfApi

        hub_info = HfApi().dataset_info(src, revision=revision)
        info["revision"] = hub_info.sha or revision
        card = getattr(hub_info, "card_data", None)
        info["license"] = license_value(getattr(card, "license", None)) if card is not None else None
    except Exception as exc:  # offline, private, rate limited: the record just lacks it
        logger.info("could not look up %s on the Hub (%s); revision/license not recorded", src,
                    type(exc).__name__)
    return info


def card_license(text: str) -> str | list[str] | None:
    try:
        from huggingface_hub import DatasetCard

        return license_value(DatasetCard(text, ignore_metadata_errors=True).data.license)
    except Exception:
        return None


def license_value(value: Any) -> str | list[str] | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def open_hf_source(source: str, split: str | None = None, streaming: bool = False) -> Any:
    """A Hub id or local dataset (``save_to_disk`` folder, image folder, data files folder)
    as a ``Dataset``, or as an ``IterableDataset`` with ``streaming=True``.

    Streaming is what lets a shard job start on a large Hub dataset without downloading it
    first (one work unit per stream shard); a ``save_to_disk`` folder streams by its cache files.
    """
    import datasets

    if not streaming:
        return open_source(source, split=split)
    path = Path(source).expanduser()
    if path.is_dir() and is_saved_dataset(path):
        ds = pick_split(datasets.load_from_disk(str(path)), split, source)
        return ds.to_iterable_dataset(num_shards=max(1, len(ds.cache_files)))
    if path.is_dir():
        return pick_split(datasets.load_dataset(str(path), streaming=True), split, source)
    return pick_split(datasets.load_dataset(source, streaming=True), split, source)
