"""The protect job: SRC dataset -> (fit) -> ``ds.map(protector)`` -> DST, with a record.

This is what ``udp-datasets protect`` runs; it is also callable from Python
(:func:`protect_dataset`). Bad images are quarantined into ``errors.jsonl`` and
left out; the output appears under its final name only when complete.

Beside the data, DST gets ``manifest.parquet`` (one row per image, see
:mod:`udp_datasets.records.manifest`) and ``udp_protection.json``: the
:class:`~udp_datasets.records.summary.JobSummary` (full config and hash, surrogate reference
with revision and weights SHA-256, library versions, start/end times, counts, the
quarantined samples, the source's id, revision and license). ``udp-datasets verify`` and
``publish`` read both.

Why beside :mod:`udp_datasets.jobs.shard_job`: a ``datasets`` source read whole and mapped
with ``ds.map(protector)`` keeps everything ``datasets`` offers (its cache, ``num_proc``,
Arrow or image-folder output in one atomic folder); the shard job is for data too large or
too many processes for that, and writes shard files instead.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from ..config import ProtectionConfig
from ..protector import PROVENANCE_COLUMNS, Protector
from ..formats.imagefolder import save_imagefolder, skipped_images
from ..sinks import atomic_directory, save_dataset
from ..sinks.atomic import OutputExistsError, OutputWriteError
from ..sinks.lock import destination_lock
from ..sources import open_source
from ..sources.columns import check_dataset, raw_image_column
from ..sources.errors import ColumnError, SourceError
from ..sources.hf import is_saved_dataset
from ..sources.paths import local_root
from ..records.manifest import manifest_digest, manifest_table, write_manifest
from ..records.names import ERRORS_FILE, MANIFEST_FILE, RECORD_FILE
from ..records.signing import sign_record
from ..records.summary import JobSummary, Tally, rate, utc_now
from ..records.versions import library_versions

logger = logging.getLogger(__name__)

__all__ = ["load_protected", "protect_dataset"]

SOURCE_PATH_COLUMN = "udp_source_path"
MAX_ERROR_RECORDS = 1000  # quarantined samples listed in the record (all are in errors.jsonl)


def protect_dataset(src: str, dst: str | os.PathLike, config: ProtectionConfig, *,
                    split: str | None = None, image_column: str = "image",
                    key_column: str | None = None, output_format: Literal["arrow", "imagefolder"] = "arrow",
                    fit_output: str | os.PathLike | None = None, num_proc: int | None = None,
                    overwrite: bool = False, drop_columns: tuple[str, ...] = (), sign_key: bytes | None = None
                    ) -> JobSummary:
    """Protect every image of SRC into DST (see module docstring). A file system error while the
    output is made (a full disk, no permission) is an :class:`OutputWriteError` naming the path;
    DST is then left as it was. ``drop_columns``: other image columns to leave out (a dataset with
    image columns besides ``image_column`` is refused otherwise, :mod:`udp_datasets.sources.columns`).
    ``sign_key``: sign the record (:mod:`udp_datasets.records.signing`)."""
    try:
        with destination_lock(dst):  # one writer per DST; a second live run is refused (sinks.lock)
            return _protect_dataset(src, dst, config, split=split, image_column=image_column,
                                    key_column=key_column, output_format=output_format, fit_output=fit_output,
                                    num_proc=num_proc, overwrite=overwrite, drop_columns=tuple(drop_columns),
                                    sign_key=sign_key)
    except OutputExistsError:
        raise
    except OSError as exc:
        raise OutputWriteError.from_error(exc, dst) from exc


def _protect_dataset(src: str, dst: str | os.PathLike, config: ProtectionConfig, *, split: str | None,
                     image_column: str, key_column: str | None, output_format: str,
                     fit_output: str | os.PathLike | None, num_proc: int | None, overwrite: bool,
                     drop_columns: tuple[str, ...] = (), sign_key: bytes | None = None) -> JobSummary:
    import datasets

    from ..sources.hf import describe_source

    start, started_at = time.perf_counter(), utc_now()
    root = local_root(src)
    skipped = skipped_images(root) if root is not None and not is_saved_dataset(root) else []
    try:
        ds = open_source(src, split=split)
    except ValueError as exc:  # only files the image folder reader skips: name them
        if not skipped:
            raise
        raise SourceError(f"{src} holds no image this tool protects ({exc}); " + "; ".join(
            f"{rel}: {reason}" for rel, reason in skipped[:5])) from exc
    if image_column not in ds.column_names:
        raise ColumnError(f"{src} has no image column {image_column!r}; its columns are "
                          f"{ds.column_names} (use --image-column)")
    if not isinstance(ds.features[image_column], datasets.Image):
        raise ColumnError(f"column {image_column!r} of {src} is {ds.features[image_column]}, not an Image "
                          "column")
    ds = check_dataset(ds, image_column, drop_columns, src)  # every other image column dropped, or refused
    # raw bytes in: the source hash is of the original file, and nothing is decoded twice
    ds = raw_image_column(ds, image_column)
    dst = Path(dst)
    with atomic_directory(dst, overwrite=overwrite) as tmp:
        errors_file = tmp / ERRORS_FILE
        if skipped:  # images the folder reader left out are reported, never silently skipped
            errors_file.write_text("".join(json.dumps({"key": rel, "index": None, "reason": reason}) + "\n"
                                           for rel, reason in skipped), encoding="utf-8")
        protector = Protector(config, image_column=image_column, key_column=key_column, errors="quarantine",
                              errors_file=errors_file, provenance_columns=True, image_root=local_root(src))
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
        write_manifest([manifest_table(manifest, sources, protector.config.hash())], tmp / MANIFEST_FILE)
        if output_format == "imagefolder":
            save_imagefolder(out, tmp, image_column=image_column, path_column=SOURCE_PATH_COLUMN)
        else:
            out = out.remove_columns([SOURCE_PATH_COLUMN])
            save_dataset(out.cast_column(image_column, datasets.Image()), tmp / "data")
        errors = _count_lines(errors_file)
        if errors == 0:
            errors_file.unlink(missing_ok=True)
        tally = Tally(count=len(out), errors=errors)
        if len(manifest):
            for linf, psnr in zip(manifest["udp_linf"], manifest["udp_psnr"]):
                tally.add(linf, psnr)
        seconds = time.perf_counter() - start
        summary = JobSummary(
            source=src, destination=str(dst), count=len(out), errors=errors, seconds=round(seconds, 3),
            images_per_second=rate(len(out), seconds), max_linf_levels=tally.max_linf,
            budget_levels=config.budget_levels, mean_psnr_db=tally.mean_psnr_db,
            config=protector.config.to_dict(), config_hash=protector.config.hash(),
            surrogate=protector.surrogate_ref.to_dict() if protector.surrogate_ref else None,
            generator=protector.engine.generator_ref, fit=fit_info, errors_file=str(dst / ERRORS_FILE) if errors else None,
            versions=library_versions(), started_at=started_at, finished_at=utc_now(),
            source_info=describe_source(src), output_format=output_format, image_column=image_column,
            split=split, error_records=_error_records(errors_file, src), images=len(out),
            manifest_sha256=manifest_digest(tmp / MANIFEST_FILE), record_file=str(dst / RECORD_FILE))
        if summary.max_linf_levels > config.budget_levels:  # defence in depth: never publish this
            raise RuntimeError(f"internal error: max L-inf {summary.max_linf_levels} exceeds budget")
        (tmp / RECORD_FILE).write_text(json.dumps(summary.to_dict(), indent=2))
        if sign_key is not None:
            sign_record(tmp / RECORD_FILE, sign_key)
    logger.info("protected %d images (%d quarantined) into %s", summary.count, errors, dst)
    return summary


def load_protected(directory: str | os.PathLike):
    """Open the Arrow output of :func:`protect_dataset` as a ``datasets.Dataset``."""
    import datasets

    return datasets.load_from_disk(str(Path(directory) / "data"))


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
