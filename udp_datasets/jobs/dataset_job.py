"""The protect job: SRC dataset -> (fit) -> ``ds.map(protector)`` -> DST, with a record.

This is what ``udp-datasets protect`` runs; it is also callable from Python
(:func:`protect_dataset`). Bad images are quarantined into ``errors.jsonl`` and
left out; the output appears under its final name only when complete.

Beside the data, DST gets ``manifest.parquet`` (one row per image, see
:mod:`udp_datasets.provenance`) and ``udp_protection.json``: the :class:`JobSummary`
(full config and hash, surrogate reference with revision and weights SHA-256, library
versions, start/end times, counts, the quarantined samples, the source's id, revision
and license). ``udp-datasets verify`` and ``publish`` read both.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ProtectionConfig
from .manifest import MANIFEST_SCHEMA, write_manifest
from ..protector import PROVENANCE_COLUMNS, ColumnError, Protector, raw_image_column
from ..sinks import atomic_directory, save_dataset, save_imagefolder
from ..sources import open_source

logger = logging.getLogger(__name__)

SOURCE_PATH_COLUMN = "udp_source_path"
RECORD_FILE = "udp_protection.json"
RECORD_FORMAT_VERSION = 1
MAX_ERROR_RECORDS = 1000  # quarantined samples listed in the record (all are in errors.jsonl)


@dataclass
class JobSummary:
    """What a protect run did; written to ``udp_protection.json`` beside the output."""

    source: str
    destination: str
    count: int
    errors: int
    seconds: float
    images_per_second: float
    max_linf_levels: int
    budget_levels: int
    mean_psnr_db: float | None
    config: dict[str, Any]
    config_hash: str
    surrogate: dict[str, Any] | None
    fit: dict[str, Any] | None = None
    errors_file: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str | None = None  # ISO 8601, UTC
    finished_at: str | None = None
    source_info: dict[str, Any] | None = None  # id, type, revision, license (sources.hf.describe_source)
    output_format: str | None = None
    image_column: str | None = None
    split: str | None = None
    error_records: list[dict[str, Any]] = field(default_factory=list)  # key (relative), index, reason
    format: str = "udp-protection"
    format_version: int = RECORD_FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def library_versions() -> dict[str, str]:
    import datasets
    import diffusers
    import torch

    from .. import __version__

    return {"udp_datasets": __version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "datasets": datasets.__version__}


def protect_dataset(src: str, dst: str | os.PathLike, config: ProtectionConfig, *,
                    split: str | None = None, image_column: str = "image",
                    key_column: str | None = None, output_format: Literal["arrow", "imagefolder"] = "arrow",
                    fit_output: str | os.PathLike | None = None, num_proc: int | None = None,
                    overwrite: bool = False) -> JobSummary:
    """Protect every image of SRC into DST (see module docstring)."""
    import datasets

    from ..sources.hf import describe_source

    start = time.perf_counter()
    started_at = _utc_now()
    ds = open_source(src, split=split)
    if image_column not in ds.column_names:
        raise ColumnError(f"{src} has no image column {image_column!r}; its columns are "
                          f"{ds.column_names} (use --image-column)")
    if not isinstance(ds.features[image_column], datasets.Image):
        raise ColumnError(f"column {image_column!r} of {src} is {ds.features[image_column]}, not an Image "
                          "column")
    # raw bytes in: the source hash is of the original file, and nothing is decoded twice
    ds = raw_image_column(ds, image_column)
    dst = Path(dst)
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        errors_file = tmp / "errors.jsonl"
        protector = Protector(config, image_column=image_column, key_column=key_column,
                              errors="quarantine", errors_file=errors_file, provenance_columns=True)
        fit_info = None
        if config.surrogate is None:
            logger.info("no surrogate given: fitting the built-in %s surrogate on %d images",
                        config.surrogate_arch, min(len(ds), config.fit_max_samples))
            fit_info = protector.fit(ds, output_dir=fit_output).to_dict()
        ds = ds.add_column(SOURCE_PATH_COLUMN, _relative_paths(ds[image_column], src))
        out = ds.map(protector, batched=True, batch_size=max(config.batch_size, 1), with_indices=True,
                     with_rank=num_proc is not None and num_proc > 1, num_proc=num_proc,
                     desc="protect", load_from_cache_file=False)
        manifest = out.select_columns([c for c in PROVENANCE_COLUMNS if c in out.column_names])
        sources = [s if s is not None else _source_label(src) for s in out[SOURCE_PATH_COLUMN]]
        out = out.remove_columns(list(manifest.column_names))
        write_manifest([_manifest_from_columns(manifest, sources, protector.config.hash())],
                       tmp / "manifest.parquet")
        if output_format == "imagefolder":
            save_imagefolder(out, tmp, image_column=image_column, path_column=SOURCE_PATH_COLUMN)
        else:
            out = out.remove_columns([SOURCE_PATH_COLUMN])
            save_dataset(out.cast_column(image_column, datasets.Image()), tmp / "data")
        errors = _count_lines(errors_file)
        if errors == 0:
            errors_file.unlink(missing_ok=True)
        linf = manifest["udp_linf"] if len(manifest) else []
        psnrs = [p for p in (manifest["udp_psnr"] if len(manifest) else []) if p is not None]
        seconds = time.perf_counter() - start
        summary = JobSummary(
            source=src, destination=str(dst), count=len(out), errors=errors, seconds=round(seconds, 3),
            images_per_second=round(len(out) / seconds, 3) if seconds > 0 else 0.0,
            max_linf_levels=max(linf, default=0), budget_levels=config.budget_levels,
            mean_psnr_db=round(sum(psnrs) / len(psnrs), 3) if psnrs else None,
            config=protector.config.to_dict(), config_hash=protector.config.hash(),
            surrogate=protector.surrogate_ref.to_dict() if protector.surrogate_ref else None,
            fit=fit_info, errors_file=str(dst / "errors.jsonl") if errors else None,
            versions=library_versions(), started_at=started_at, finished_at=_utc_now(),
            source_info=describe_source(src), output_format=output_format, image_column=image_column,
            split=split, error_records=_error_records(errors_file, src))
        if summary.max_linf_levels > config.budget_levels:  # defence in depth: never publish this
            raise RuntimeError(f"internal error: max L-inf {summary.max_linf_levels} exceeds budget")
        (tmp / RECORD_FILE).write_text(json.dumps(summary.to_dict(), indent=2))
    logger.info("protected %d images (%d quarantined) into %s", summary.count, errors, dst)
    return summary


def load_protected(directory: str | os.PathLike):
    """Open the Arrow output of :func:`protect_dataset` as a ``datasets.Dataset``."""
    import datasets

    return datasets.load_from_disk(str(Path(directory) / "data"))


def _manifest_from_columns(columns: Any, sources: list[Any], config_hash: str):
    import pyarrow as pa

    return pa.table({
        "key": columns["udp_key"], "source": [str(s) if s is not None else None for s in sources],
        "source_sha256": columns["udp_source_sha256"], "sha256": columns["udp_sha256"],
        "width": columns["udp_width"], "height": columns["udp_height"], "linf": columns["udp_linf"],
        "psnr": columns["udp_psnr"], "config_hash": [config_hash] * len(columns),
    }, schema=MANIFEST_SCHEMA)


def _relative_paths(values: list[dict[str, Any]], src: str) -> list[str | None]:
    root = Path(src).expanduser().resolve()
    out: list[str | None] = []
    for v in values:
        p = v.get("path") if isinstance(v, dict) else None
        if not p:
            out.append(None)
            continue
        try:
            out.append(str(Path(p).resolve().relative_to(root)))
        except ValueError:
            out.append(Path(p).name)
    return out


def _utc_now() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _source_label(src: str) -> str:
    """How the manifest names a source without per-image paths: a Hub id as is, a local
    folder by its name only (an absolute local path means nothing to readers of the data)."""
    path = Path(src).expanduser()
    return path.resolve().name if path.exists() else src


def _error_records(errors_file: Path, src: str) -> list[dict[str, Any]]:
    """The first quarantined samples, keys made relative to SRC (no local paths published)."""
    if not errors_file.exists():
        return []
    records = []
    with open(errors_file, encoding="utf-8") as fh:
        for line in fh:
            if len(records) >= MAX_ERROR_RECORDS:
                break
            if line.strip():
                record = json.loads(line)
                key = record.get("key")
                if isinstance(key, str) and os.path.isabs(key):
                    record["key"] = _relative_paths([{"path": key}], src)[0]
                records.append(record)
    return records


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


def format_summary(summary: JobSummary) -> str:
    psnr = "n/a" if summary.mean_psnr_db is None else f"{summary.mean_psnr_db:.2f} dB"
    lines = [
        f"protected   {summary.count} images -> {summary.destination}",
        f"quarantined {summary.errors}" + (f" (see {summary.errors_file})" if summary.errors else ""),
        f"time        {summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s)",
        f"L-inf       max {summary.max_linf_levels} levels (budget {summary.budget_levels})",
        f"PSNR        mean {psnr}",
    ]
    if summary.mean_psnr_db is not None and not math.isfinite(summary.mean_psnr_db):
        lines.append("warning: infinite PSNR means some images were unchanged")
    return "\n".join(lines)
