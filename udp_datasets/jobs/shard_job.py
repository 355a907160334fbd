"""Shard runner: protect sharded datasets at scale, resumable, crash-safe, on many processes.

    udp-datasets protect 'data/shard-{000000..000099}.tar' out/ --surrogate S --num-processes 4
    accelerate launch -m udp_datasets.cli protect data/ out/ --surrogate S
    run_shards("data/*.parquet", "out", config)                       # Python

**Work units.** One input shard (a WebDataset tar, a Parquet file, or a slice of a
``datasets`` dataset) is one unit: read -> protect -> write to a hidden temporary
name -> fsync -> atomic rename to the shard's own name under DST -> per-shard
errors and manifest -> completion marker, written last (also temp + rename). A
unit whose marker is present is complete; anything else is redone from scratch,
so a run killed at any moment (SIGKILL included) resumes to output that is byte
for byte what an uninterrupted run writes (tar and Parquet output is deterministic,
see :mod:`udp_datasets.sinks.shards`; per-sample randomness is keyed by the sample
key, so batching and the rank that runs a shard do not matter).

**Layout.** DST mirrors the input: same shard names (and sub-folders), same samples
in the same order, every non-image member / column unchanged; images become PNG
(``KEY.jpg`` -> ``KEY.png``). The runner's own files live in ``DST/.udp/``:

    .udp/job.json                  job summary (main process, when every rank is done)
    .udp/manifest.parquet          all per-shard manifests merged (provenance.MANIFEST_SCHEMA)
    .udp/errors.jsonl              every quarantined sample: key, shard, reason
    .udp/surrogate/                the surrogate fitted for this job (when none was given)
    .udp/shards/NAME.done.json     completion marker with the shard's stats
    .udp/shards/NAME.manifest.parquet, NAME.errors.jsonl
    .udp/ranks/rank-00000.json     which shards each rank did in the last run

A hidden folder rather than files beside the shards, because ``datasets`` and shell
globs skip hidden paths: ``load_dataset("parquet", data_dir=DST)``,
``wds.WebDataset("DST/*.tar")`` and ``upload_folder`` of the shards see only data.

**Markers and resume.** A marker records the *job hash*: the protection config's
hash with the surrogate identified by its weights' SHA-256 (not its path, so a
moved DST still resumes), plus the runner options that change output bytes
(image column, key column, image extensions). A re-run skips shards whose marker
matches and whose output file has the recorded size, redoes the rest, and refuses
shards marked with another hash unless ``overwrite=True``.

**Distribution.** Rank, world size and device come from ``accelerate.PartialState``
(``accelerate launch``, torchrun, Slurm through accelerate's launcher). The main
process prepares DST (removes stale temporaries, fits the surrogate once if the
config has none, on at most ``fit_max_samples`` images read in shard order, saved
in ``.udp/surrogate`` and reused by re-runs), scans the markers and broadcasts the
list of pending shards; rank r takes pending[r::world]. Each rank loads the
surrogate once on its device. After a barrier the main process merges manifests
and errors and writes ``.udp/job.json``. DST must be on a file system every node
sees.

**Bounded memory.** Samples stream shard by shard in chunks of ``config.batch_size``
images: a reader thread fills a queue of ``prefetch`` chunks (tar / Parquet reading
and sample grouping) while the current chunk is protected, and a writer thread
drains a queue of the same depth to the output file. Nothing is kept per sample
across chunks except small manifest rows, which stream into a per-shard Parquet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..config import ConfigError, ProtectionConfig
from ..images import ImageError
from ..protector import FailedImage, ProtectedImage, Protector
from .manifest import MANIFEST_SCHEMA, manifest_table
from ..sinks.atomic import (OutputExistsError, atomic_directory, atomic_file, is_temp_name, remove_path,
                            write_bytes_atomic, write_json_atomic)
from ..sinks.parquet_writer import ParquetShardWriter, parquet_compression, replace_image_column
from ..sinks.tar_writer import TarShardWriter
from ..sources.hf import SourceError
from ..sources.keys import IMAGE_EXTENSIONS, png_member_name, split_key
from ..sources.shards import (Shard, ShardReadError, discover_shards, find_image_column, iter_parquet_batches,
                              iter_tar_samples, looks_like_shards, open_parquet)

logger = logging.getLogger(__name__)

BOOKKEEPING = ".udp"
RUNNER_VERSION = 1
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_QUARANTINED = 0, 1, 2, 3
CHILD_ENV = "UDP_DATASETS_LAUNCHED"  # set by --num-processes in the processes it starts


class ConfigMismatchError(ConfigError):
    """DST holds shards (or a fitted surrogate) made with another config."""


# ======================================================================= units
@dataclass
class WorkUnit:
    """One shard of work. ``name`` is the output path relative to DST (posix)."""

    name: str
    kind: str  # "tar" | "parquet" | "hf"
    source: str  # where the input comes from (for the manifest and messages)
    shard: Shard | None = None
    index: int = 0  # hf: which slice
    count: int = 1  # hf: how many slices


@dataclass
class Chunk:
    """A batch of records (tar samples or table rows) read from one unit.

    ``images`` are the payloads to protect, ``owners[j]`` the record image j belongs
    to; ``image_keys`` seed the per-sample randomness (``None``: the protector's
    default, the pixel hash). ``problems`` marks records refused before protection.
    """

    keys: list[str | None]
    images: list[Any]
    owners: list[int]
    image_keys: list[str] | None
    names: list[str]
    data: Any
    group: Any = 0
    problems: dict[int, str] = field(default_factory=dict)
    rows: list[int] | None = None  # table rows: index within the unit, for error records


class _CodecBase:
    """What every shard codec shares: closing or aborting its (temporary-file) writer."""

    writer: Any = None

    def close(self) -> None:
        assert self.writer is not None
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class _TarCodec(_CodecBase):
    """WebDataset tar shards: samples grouped by key, members copied or re-encoded."""

    def __init__(self, unit: WorkUnit, batch_size: int, image_extensions: frozenset[str]):
        assert unit.shard is not None
        self.unit = unit
        self.batch_size = batch_size
        self.image_extensions = image_extensions
        self.writer: TarShardWriter | None = None

    def chunks(self) -> Iterator[Chunk]:
        pending: list[Any] = []
        n_images = n_bytes = 0
        for sample in iter_tar_samples(self.unit.shard.url, self.image_extensions):  # type: ignore[union-attr]
            pending.append(sample)
            n_images += len(sample.images)
            n_bytes += sum(len(m.data or b"") for m in sample.members)
            if n_images >= self.batch_size or n_bytes >= (32 << 20) or len(pending) >= 4096:
                yield self._chunk(pending)
                pending, n_images, n_bytes = [], 0, 0
        if pending:
            yield self._chunk(pending)

    def _chunk(self, samples: list[Any]) -> Chunk:
        chunk = Chunk(keys=[], images=[], owners=[], image_keys=[], names=[], data=samples)
        for i, sample in enumerate(samples):
            chunk.keys.append(sample.key if sample.key is not None else
                              (sample.members[0].info.name if sample.images else None))
            problem = sample.problem
            if problem is None and sample.images:
                names = [m.info.name for m in sample.members]
                for j in sample.images:
                    new = png_member_name(names[j])
                    if new != names[j] and new in names:
                        problem = (f"cannot rename {names[j]!r} to {new!r}: the sample already has a "
                                   f"member of that name")
            if problem is not None:
                chunk.problems[i] = problem
            for j in sample.images:
                name = sample.members[j].info.name
                ext = split_key(name)[1] or name
                chunk.images.append(sample.members[j].data)
                chunk.owners.append(i)
                single = len(sample.images) == 1 and sample.key is not None
                chunk.image_keys.append(sample.key if single else f"{sample.key}.{ext}")  # type: ignore[union-attr]
                chunk.names.append(name)
        return chunk

    def open(self, tmp: Path) -> None:
        self.writer = TarShardWriter(tmp, compress=self.unit.shard.compressed)  # type: ignore[union-attr]

    def write(self, chunk: Chunk, ok: list[bool], pngs: list[bytes | None]) -> None:
        assert self.writer is not None
        image_at = 0
        for i, sample in enumerate(chunk.data):
            n = len(sample.images)
            mine = pngs[image_at:image_at + n]
            image_at += n
            if not ok[i]:
                continue
            replaced = dict(zip(sample.images, mine))
            for j, member in enumerate(sample.members):
                if j in replaced:
                    png = replaced[j]
                    assert png is not None  # an ok sample has every image protected
                    self.writer.add_renamed(member.info, png_member_name(member.info.name), png)
                else:
                    self.writer.add(member.info, member.data)


class _TableCodec(_CodecBase):
    """Arrow tables (Parquet files, ``datasets`` slices): one row = one record."""

    def __init__(self, unit: WorkUnit, batch_size: int, image_column: str | None, key_column: str | None,
                 dataset: Any = None):
        self.unit = unit
        self.batch_size = batch_size
        self.key_column = key_column
        self.dataset = dataset
        self.writer: ParquetShardWriter | None = None
        if unit.kind == "parquet":
            assert unit.shard is not None
            self.pf = open_parquet(unit.shard.url)
            self.schema = self.pf.schema_arrow
            self.compression = parquet_compression(self.pf)
        else:
            self.pf = None
            self.schema = _dataset_schema(dataset)
            self.compression = "snappy"
        self.image_column = find_image_column(self.schema, image_column)
        _check_image_type(self.schema, self.image_column, unit.source)
        if key_column is not None and key_column not in self.schema.names:
            raise SourceError(f"{unit.source} has no key column {key_column!r}; its columns are "
                              f"{self.schema.names}")
        if self.key_column is None and "__key__" in self.schema.names:
            self.key_column = "__key__"

    def _tables(self) -> Iterator[tuple[Any, Any]]:
        if self.pf is not None:
            yield from iter_parquet_batches(self.pf, self.batch_size)
            return
        part = _dataset_slice(self.dataset, self.unit.index, self.unit.count)
        for table in part.with_format("arrow").iter(batch_size=self.batch_size):
            if table.num_rows:
                yield 0, table

    def chunks(self) -> Iterator[Chunk]:
        row = 0
        for group, table in self._tables():
            images = table.column(self.image_column).to_pylist()
            keys = ([None if k is None else str(k) for k in table.column(self.key_column).to_pylist()]
                    if self.key_column else None)
            rows = list(range(row, row + len(images)))
            row += len(images)
            names = [f"{self.unit.name} row {r}" for r in rows]
            chunk = Chunk(keys=keys if keys is not None else [None] * len(images), images=images,
                          owners=list(range(len(images))), image_keys=None, names=names, data=table,
                          group=group, rows=rows)
            if keys is not None:
                chunk.image_keys = [k if k is not None else "" for k in keys]
                for i, k in enumerate(keys):
                    if k is None:
                        chunk.problems[i] = f"key column {self.key_column!r} is null"
            yield chunk

    def open(self, tmp: Path) -> None:
        self.writer = ParquetShardWriter(tmp, self.schema, compression=self.compression)

    def write(self, chunk: Chunk, ok: list[bool], pngs: list[bytes | None]) -> None:
        assert self.writer is not None
        kept = [p for p, good in zip(pngs, ok) if good]
        table = replace_image_column(chunk.data, self.image_column, ok, kept)  # type: ignore[arg-type]
        self.writer.write(table, chunk.group)


def _check_image_type(schema: Any, column: str, source: str) -> None:
    import pyarrow as pa

    typ = schema.field(column).type
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return
    if pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0:
        return
    raise SourceError(f"{source}: image column {column!r} has type {typ}; it must hold the image bytes "
                      "(binary, or a Hugging Face Image struct<bytes, path>)")


def _dataset_schema(ds: Any) -> Any:
    features = getattr(ds, "features", None)
    if features is None and hasattr(ds, "_resolve_features"):
        features = ds._resolve_features().features
    if features is None:
        raise SourceError("the dataset's features are unknown; pass features= when loading it")
    return features.arrow_schema


def _dataset_slice(ds: Any, index: int, count: int) -> Any:
    import datasets

    if isinstance(ds, datasets.IterableDataset):
        return ds.shard(num_shards=count, index=index)
    return ds.shard(num_shards=count, index=index, contiguous=True)


def dataset_units(ds: Any, rows_per_shard: int = 10_000, split: str | None = None) -> list[WorkUnit]:
    """Work units for a ``datasets.Dataset`` (contiguous slices of ``rows_per_shard``) or an
    ``IterableDataset`` (its own shards), named like the Hub's Parquet layout:
    ``data/{split}-00000-of-00004.parquet``. The names depend on the data and
    ``rows_per_shard`` only, never on the world size, so a resumed job may use
    another number of processes."""
    import datasets

    split = split or (str(ds.split) if getattr(ds, "split", None) else "train")
    if isinstance(ds, datasets.IterableDataset):
        count = ds.n_shards
    else:
        count = max(1, math.ceil(len(ds) / rows_per_shard))
    return [WorkUnit(name=f"data/{split}-{i:05d}-of-{count:05d}.parquet", kind="hf",
                     source=f"{getattr(ds, 'info', None) and ds.info.dataset_name or 'dataset'}[{split}] "
                            f"shard {i}/{count}", index=i, count=count)
            for i in range(count)]


# ================================================================= background
class _Prefetch:
    """Run an iterator in a thread, ``depth`` items ahead; exceptions re-raise in the consumer."""

    _END = object()

    def __init__(self, iterable: Iterable[Any], depth: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iterable,), daemon=True, name="udp-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterable: Iterable[Any]) -> None:
        try:
            for item in iterable:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            self._put(exc)

    def __iter__(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class _Writer:
    """Call ``fn(*args)`` in order on a thread, ``depth`` calls queued at most."""

    _END = object()

    def __init__(self, fn: Callable[..., None], depth: int):
        self._fn = fn
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="udp-writer")
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if self._error is None:
                try:
                    self._fn(*item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in put()/finish()
                    self._error = exc

    def put(self, *args: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(args)

    def finish(self) -> None:
        self._queue.put(self._END)
        self._thread.join()
        if self._error is not None:
            raise self._error


# ================================================================== the job
@dataclass
class ShardJobSummary:
    """What a sharded protect job wrote; saved as ``DST/.udp/job.json``."""

    source: str
    destination: str
    shards: int
    shards_done: int  # by this run
    shards_skipped: int  # already complete with the same job hash
    shards_failed: list[dict[str, str]]
    count: int  # protected samples in DST (all shards)
    images: int
    errors: int  # quarantined samples
    passthrough: int  # tar entries with no image, copied unchanged
    seconds: float  # this run, wall clock
    images_per_second: float  # this run
    max_linf_levels: int
    budget_levels: int
    mean_psnr_db: float | None
    config: dict[str, Any]
    config_hash: str  # the job hash the markers carry
    protection_config_hash: str  # ProtectionConfig.hash() of the resolved config
    surrogate: dict[str, Any] | None
    world_size: int
    ranks: list[dict[str, Any]]
    fit: dict[str, Any] | None = None
    errors_file: str | None = None
    manifest: str | None = None
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_state() -> Any:
    """``accelerate.PartialState`` for this process (CPU-aware, long barrier timeout).

    On a machine without CUDA, ``PartialState()`` ignores the process group that
    ``accelerate launch --multi_gpu`` / torchrun set up, so ``cpu=True`` is passed
    there. Barriers wait for the slowest rank's shards: the timeout is 7 days
    (``UDP_DATASETS_BARRIER_TIMEOUT`` seconds to change it).
    """
    import datetime

    import torch
    from accelerate import PartialState

    seconds = float(os.environ.get("UDP_DATASETS_BARRIER_TIMEOUT", 7 * 24 * 3600))
    return PartialState(cpu=not torch.cuda.is_available(), timeout=datetime.timedelta(seconds=seconds))


def job_hash(config: ProtectionConfig, surrogate_sha256: str | None, *, image_column: str | None,
             key_column: str | None, image_extensions: Iterable[str]) -> str:
    """The identity of a job's output bytes (see module docstring)."""
    payload = {
        "config": config.replace(surrogate=None, surrogate_revision=None).hash(),
        "surrogate_sha256": surrogate_sha256 if config.surrogate is not None else None,
        "image_column": image_column, "key_column": key_column,
        "image_extensions": sorted(image_extensions), "runner": RUNNER_VERSION,
    }
    canon = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


class ShardRunner:
    """Protect every shard of SRC into DST (see the module docstring).

    Args:
        src: a shard spec (tar / Parquet path, brace pattern, glob, folder, URL, or a
            list of them), or a ``datasets.Dataset`` / ``IterableDataset``.
        dst: output folder (created; re-running into it resumes).
        config: the protection recipe; without ``surrogate`` one is fitted once.
        image_column: Parquet / dataset image column (default: the Hugging Face
            ``Image`` feature, else ``image``). Tar samples use ``image_extensions``.
        key_column: Parquet / dataset column whose values seed per-sample randomness
            (default: a ``__key__`` column if present, else the pixel hash, as
            :class:`~udp_datasets.Protector` does). Tar samples use their WebDataset key.
        overwrite: redo shards marked with another config (and write into a non-empty
            DST that is not a runner output).
        rows_per_shard: slice size for a ``datasets.Dataset`` source.
        prefetch: chunks read ahead and queued for writing.
        state: an ``accelerate.PartialState`` (default: :func:`make_state`).
    """

    def __init__(self, src: Any, dst: str | os.PathLike, config: ProtectionConfig, *,
                 image_column: str | None = None, key_column: str | None = None, overwrite: bool = False,
                 image_extensions: Iterable[str] = IMAGE_EXTENSIONS, rows_per_shard: int = 10_000,
                 split: str | None = None, prefetch: int = 2, progress: bool = True, state: Any = None):
        if config.caption_column is not None:
            raise ValueError(
                f"caption_column={config.caption_column!r}: per-sample captions are read by the datasets path "
                "(`udp-datasets protect` on a dataset or image folder, `ds.map(protector)`), not yet by shard "
                "jobs; use a fixed --prompt template here")
        self.src = src
        self.dst = Path(dst).expanduser()
        self.config = config
        self.image_column = image_column
        self.key_column = key_column
        self.overwrite = overwrite
        self.image_extensions = frozenset(e.lower().lstrip(".") for e in image_extensions)
        self.rows_per_shard = rows_per_shard
        self.split = split
        self.prefetch = prefetch
        self.progress = progress
        self.state = state
        self.book = self.dst / BOOKKEEPING
        self._dataset = None if isinstance(src, (str, os.PathLike, list, tuple)) else src

    # ------------------------------------------------------------------ units
    def units(self) -> list[WorkUnit]:
        if self._dataset is not None:
            return dataset_units(self._dataset, self.rows_per_shard, self.split)
        shards = discover_shards(self.src if isinstance(self.src, (list, tuple)) else str(self.src))
        return [WorkUnit(name=s.name, kind=s.kind, source=s.url, shard=s) for s in shards]

    def _codec(self, unit: WorkUnit) -> _TarCodec | _TableCodec:
        batch = max(self.config.batch_size, 1)
        if unit.kind == "tar":
            return _TarCodec(unit, batch, self.image_extensions)
        return _TableCodec(unit, batch, self.image_column, self.key_column, dataset=self._dataset)

    def marker_path(self, unit_name: str) -> Path:
        return self.book / "shards" / f"{unit_name}.done.json"

    # -------------------------------------------------------------------- run
    def run(self) -> ShardJobSummary:
        start = time.perf_counter()
        state = self.state if self.state is not None else make_state()
        rank, world = state.process_index, state.num_processes
        units = self.units()
        by_name = {u.name: u for u in units}
        self._check_paths(units)

        # 1. main process: prepare DST, fit the surrogate if needed; everyone gets the outcome
        config_dict, fit_info = _main_then_broadcast(state, lambda: self._prepare(units), "prepare")
        config = ProtectionConfig.from_dict(config_dict)
        if config.device == "auto" and world > 1:
            config = config.replace(device=str(state.device))

        # 2. every rank loads the surrogate once, on its device
        protector = Protector(config, progress=False)
        protector.prepare_surrogate(state.local_process_index)
        ref = protector.surrogate_ref
        jhash = job_hash(config, ref.sha256 if ref else None, image_column=self.image_column,
                         key_column=self.key_column, image_extensions=self.image_extensions)

        # 3. main scans the markers; everyone works on the same pending list
        pending, skipped = _main_then_broadcast(state, lambda: self._scan(units, jhash), "scan")
        mine = pending[rank::world]
        logger.info("rank %d/%d: %d of %d pending shards (%d complete already)", rank, world, len(mine),
                    len(pending), len(skipped))

        # 4. work
        done, failed = [], []
        bar = _progress(mine, self.progress and state.is_main_process, world)
        for name in bar:
            unit = by_name[name]
            try:
                stats = self._process(unit, protector, state, jhash)
                done.append({"shard": name, "count": stats["count"], "errors": stats["errors"],
                             "seconds": stats["seconds"]})
            except (ShardReadError, SourceError, ImageError, OSError, ValueError, TypeError) as exc:
                logger.error("shard %s failed: %s", name, exc)
                failed.append({"shard": name, "reason": str(exc)})
        write_json_atomic(self.book / "ranks" / f"rank-{rank:05d}.json",
                          {"rank": rank, "world_size": world, "device": str(protector.prepare_surrogate(state.local_process_index).device),
                           "shards": done, "failed": failed,
                           "seconds": round(time.perf_counter() - start, 3)})

        # 5. main merges and summarises once every rank is done
        state.wait_for_everyone()
        if state.is_main_process:
            summary = self._finish(units, config, ref, jhash, fit_info, world, skipped,
                                   time.perf_counter() - start)
            write_json_atomic(self.book / "job.json", summary.to_dict())
        state.wait_for_everyone()
        data = json.loads((self.book / "job.json").read_text(encoding="utf-8"))
        return ShardJobSummary(**data)

    # -------------------------------------------------------------- stages
    def _check_paths(self, units: list[WorkUnit]) -> None:
        if self.dst.exists() and not self.dst.is_dir():
            raise OutputExistsError(f"{self.dst} exists and is not a folder")
        dst = self.dst.resolve()
        for unit in units:
            if unit.shard is not None and Path(unit.shard.url).exists():
                if Path(unit.shard.url).resolve() == (dst / unit.name).resolve():
                    raise OutputExistsError(f"DST {self.dst} would overwrite its own input {unit.shard.url}; "
                                            "choose another destination")

    def _prepare(self, units: list[WorkUnit]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Main process: claim DST, clean temporaries, resolve (fit) the surrogate."""
        if self.dst.exists() and any(self.dst.iterdir()) and not self.book.is_dir() and not self.overwrite:
            raise OutputExistsError(
                f"{self.dst} is not empty and is not the output of a shard job (no {BOOKKEEPING}/); "
                "choose another destination, or pass --overwrite to write into it")
        (self.book / "shards").mkdir(parents=True, exist_ok=True)
        removed = 0
        for root, dirs, files in os.walk(self.dst):
            for name in files + dirs:
                if is_temp_name(name):
                    remove_path(Path(root) / name)
                    removed += 1
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run", removed)
        shutil.rmtree(self.book / "ranks", ignore_errors=True)
        if self.config.surrogate is not None:
            return self.config.to_dict(), None
        return self._fitted_surrogate(units)

    def _fitted_surrogate(self, units: list[WorkUnit]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        folder = self.book / "surrogate"
        info_file = folder / "udp_fit.json"
        if info_file.exists():
            info = json.loads(info_file.read_text(encoding="utf-8"))
            saved = ProtectionConfig.from_dict(info["config"])
            if saved.hash() == self.config.hash():
                logger.info("reusing the surrogate fitted by an earlier run: %s", folder)
                return self.config.replace(surrogate=str(folder.resolve())).to_dict(), info.get("fit")
            if not self.overwrite:
                raise ConfigMismatchError(
                    f"{folder} was fitted with another config (hash {saved.hash()}, now "
                    f"{self.config.hash()}); use another DST, or --overwrite to refit and redo every shard")
        images = self._fit_images(units)
        logger.info("no surrogate given: fitting the built-in %s surrogate on %d images",
                    self.config.surrogate_arch, len(images))
        protector = Protector(self.config, progress=self.progress)
        with atomic_directory(folder, overwrite=True) as tmp:
            result = protector.fit(images, output_dir=tmp)
        return self.config.replace(surrogate=str(folder.resolve())).to_dict(), result.to_dict()

    def _fit_images(self, units: list[WorkUnit]) -> list[Any]:
        """The first ``fit_max_samples`` images in shard order (bounded memory)."""
        limit = self.config.fit_max_samples
        images: list[Any] = []
        for unit in units:
            for chunk in self._codec(unit).chunks():
                images.extend(img for img, owner in zip(chunk.images, chunk.owners)
                              if owner not in chunk.problems and img is not None)
                if len(images) >= limit:
                    return images[:limit]
        if not images:
            raise ImageError("fit: the source has no images")
        return images

    def _scan(self, units: list[WorkUnit], jhash: str) -> tuple[list[str], list[str]]:
        pending, skipped, foreign = [], [], []
        for unit in units:
            marker = self._read_marker(unit.name)
            if marker is None:
                pending.append(unit.name)
                continue
            if marker.get("config_hash") != jhash:
                foreign.append(f"{unit.name} (hash {marker.get('config_hash')})")
                pending.append(unit.name)
                continue
            out = self.dst / unit.name
            if not out.is_file() or out.stat().st_size != marker.get("bytes"):
                logger.warning("shard %s has a marker but its output is missing or changed: redoing it", unit.name)
                pending.append(unit.name)
                continue
            skipped.append(unit.name)
        if foreign and not self.overwrite:
            listing = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise ConfigMismatchError(
                f"{len(foreign)} shard(s) in {self.dst} were protected with another config than this job's "
                f"(hash {jhash}): {listing}; use another DST, or --overwrite to redo them")
        return pending, skipped

    def _read_marker(self, name: str) -> dict[str, Any] | None:
        path = self.marker_path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            logger.warning("unreadable marker %s: redoing the shard", path)
            return None

    # ------------------------------------------------------------- one shard
    def _process(self, unit: WorkUnit, protector: Protector, state: Any, jhash: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        final = self.dst / unit.name
        base = self.book / "shards" / unit.name
        marker = self.marker_path(unit.name)
        marker.unlink(missing_ok=True)  # from here on the shard is not complete
        codec = self._codec(unit)
        errors: list[dict[str, Any]] = []
        stats = {"count": 0, "images": 0, "errors": 0, "passthrough": 0, "max_linf": 0,
                 "psnr_sum": 0.0, "psnr_count": 0, "infinite_psnr": 0}
        manifest_final = base.parent / f"{base.name}.manifest.parquet"
        manifest_final.parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        with atomic_file(final) as tmp, atomic_file(manifest_final) as mtmp:
            codec.open(tmp)
            mwriter = pq.ParquetWriter(str(mtmp), MANIFEST_SCHEMA)
            writer = _Writer(codec.write, self.prefetch)
            reader = _Prefetch(codec.chunks(), self.prefetch)
            try:
                for chunk in reader:
                    ok, pngs, good = self._protect_chunk(chunk, protector, state, unit, errors, stats)
                    writer.put(chunk, ok, pngs)
                    if good:
                        mwriter.write_table(manifest_table(good, unit.name, jhash))
                writer.finish()
                codec.close()
                mwriter.close()
            except BaseException:
                reader.close()
                with contextlib.suppress(Exception):
                    writer.finish()
                codec.abort()
                with contextlib.suppress(Exception):
                    mwriter.close()
                raise
            reader.close()
        errors_file = base.parent / f"{base.name}.errors.jsonl"
        if errors:
            write_bytes_atomic(errors_file, "".join(json.dumps(e, ensure_ascii=False) + "\n"
                                                    for e in errors).encode())
        else:
            errors_file.unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        record = {
            "shard": unit.name, "source": unit.source, "status": "done", "config_hash": jhash,
            "count": stats["count"], "images": stats["images"], "errors": stats["errors"],
            "passthrough": stats["passthrough"], "seconds": round(seconds, 3),
            "images_per_second": round(stats["images"] / seconds, 3) if seconds > 0 else 0.0,
            "max_linf_levels": stats["max_linf"],
            "mean_psnr_db": (round(stats["psnr_sum"] / stats["psnr_count"], 3) if stats["psnr_count"] else None),
            "psnr_sum": stats["psnr_sum"], "psnr_count": stats["psnr_count"],
            "bytes": final.stat().st_size, "sha256": _file_sha256(final),
            "rank": state.process_index, "world_size": state.num_processes,
            "errors_file": str(errors_file.relative_to(self.dst)) if errors else None,
            "manifest": str(manifest_final.relative_to(self.dst)),
        }
        if stats["max_linf"] > self.config.budget_levels:  # defence in depth: never mark this done
            raise RuntimeError(f"internal error: shard {unit.name} has L-inf {stats['max_linf']} over budget")
        write_json_atomic(marker, record)  # last: the shard is complete from here on
        logger.info("shard %s: %d samples, %d quarantined, %.1f s", unit.name, stats["count"], stats["errors"],
                    seconds)
        return record

    def _protect_chunk(self, chunk: Chunk, protector: Protector, state: Any, unit: WorkUnit,
                       errors: list[dict[str, Any]], stats: dict[str, Any],
                       ) -> tuple[list[bool], list[bytes | None], list[ProtectedImage]]:
        n = len(chunk.keys)
        todo = [j for j, owner in enumerate(chunk.owners) if owner not in chunk.problems]
        results: list[ProtectedImage | FailedImage | None] = [None] * len(chunk.images)
        if todo:
            keys = [chunk.image_keys[j] for j in todo] if chunk.image_keys is not None else None
            got = protector.protect_images([chunk.images[j] for j in todo], keys=keys,
                                           rank=state.local_process_index, names=[chunk.names[j] for j in todo])
            for j, r in zip(todo, got):
                results[j] = r
        reasons: dict[int, str] = dict(chunk.problems)
        per_owner = Counter(chunk.owners)
        for j, owner in enumerate(chunk.owners):
            r = results[j]
            if isinstance(r, FailedImage) and owner not in reasons:
                reasons[owner] = r.reason if per_owner[owner] == 1 else f"{chunk.names[j]}: {r.reason}"
        ok = [i not in reasons for i in range(n)]
        for i in range(n):
            if not ok[i]:
                record: dict[str, Any] = {"key": chunk.keys[i] if chunk.keys[i] is not None else
                                          _first_name(chunk, i), "shard": unit.name, "reason": reasons[i]}
                if chunk.rows is not None:
                    record["row"] = chunk.rows[i]
                errors.append(record)
                stats["errors"] += 1
            elif per_owner[i]:
                stats["count"] += 1
            else:
                stats["passthrough"] += 1
        pngs: list[bytes | None] = []
        good: list[ProtectedImage] = []
        for j, owner in enumerate(chunk.owners):
            r = results[j]
            if ok[owner] and isinstance(r, ProtectedImage):
                pngs.append(r.png)
                good.append(r)
                stats["images"] += 1
                stats["max_linf"] = max(stats["max_linf"], r.linf)
                if math.isfinite(r.psnr):
                    stats["psnr_sum"] += r.psnr
                    stats["psnr_count"] += 1
            else:
                pngs.append(None)
        return ok, pngs, good

    # --------------------------------------------------------------- finish
    def _finish(self, units: list[WorkUnit], config: ProtectionConfig, ref: Any, jhash: str,
                fit_info: dict[str, Any] | None, world: int, skipped: list[str], seconds: float,
                ) -> ShardJobSummary:
        import pyarrow.parquet as pq

        from .dataset_job import library_versions

        ranks = []
        for path in sorted((self.book / "ranks").glob("rank-*.json")):
            ranks.append(json.loads(path.read_text(encoding="utf-8")))
        done_now = sum(len(r["shards"]) for r in ranks)
        failed = [f for r in ranks for f in r["failed"]]
        totals = {"count": 0, "images": 0, "errors": 0, "passthrough": 0, "max_linf": 0, "psnr_sum": 0.0,
                  "psnr_count": 0}
        images_now = 0
        now = {d["shard"] for r in ranks for d in r["shards"]}
        manifest_path = self.book / "manifest.parquet"
        errors_path = self.book / "errors.jsonl"
        with atomic_file(manifest_path) as mtmp, atomic_file(errors_path) as etmp, open(etmp, "wb") as efh:
            writer = pq.ParquetWriter(str(mtmp), MANIFEST_SCHEMA)
            for unit in units:
                marker = self._read_marker(unit.name)
                if marker is None or marker.get("config_hash") != jhash:
                    continue
                for key in ("count", "images", "errors", "passthrough", "psnr_count"):
                    totals[key] += int(marker.get(key) or 0)
                totals["psnr_sum"] += float(marker.get("psnr_sum") or 0.0)
                totals["max_linf"] = max(totals["max_linf"], int(marker.get("max_linf_levels") or 0))
                if unit.name in now:
                    images_now += int(marker.get("images") or 0)
                if marker.get("manifest"):
                    writer.write_table(pq.read_table(self.dst / marker["manifest"]).cast(MANIFEST_SCHEMA))
                if marker.get("errors_file"):
                    efh.write((self.dst / marker["errors_file"]).read_bytes())
            writer.close()
        if totals["errors"] == 0:
            errors_path.unlink(missing_ok=True)
        return ShardJobSummary(
            source=_describe_source(self.src), destination=str(self.dst), shards=len(units),
            shards_done=done_now, shards_skipped=len(skipped), shards_failed=failed,
            count=totals["count"], images=totals["images"], errors=totals["errors"],
            passthrough=totals["passthrough"], seconds=round(seconds, 3),
            images_per_second=round(images_now / seconds, 3) if seconds > 0 else 0.0,
            max_linf_levels=totals["max_linf"], budget_levels=config.budget_levels,
            mean_psnr_db=(round(totals["psnr_sum"] / totals["psnr_count"], 3) if totals["psnr_count"] else None),
            config=config.replace(device="auto").to_dict(), config_hash=jhash,
            protection_config_hash=config.hash(), surrogate=ref.to_dict() if ref else None, world_size=world,
            ranks=[{k: r[k] for k in ("rank", "device", "seconds")} | {"shards": [d["shard"] for d in r["shards"]]}
                   for r in ranks],
            fit=fit_info, errors_file=str(errors_path) if totals["errors"] else None,
            manifest=str(manifest_path), versions=library_versions())


def run_shards(src: Any, dst: str | os.PathLike, config: ProtectionConfig, **kwargs: Any) -> ShardJobSummary:
    """Protect every shard of SRC into DST; see :class:`ShardRunner` for the options."""
    return ShardRunner(src, dst, config, **kwargs).run()


def _first_name(chunk: Chunk, i: int) -> str:
    for j, owner in enumerate(chunk.owners):
        if owner == i:
            return chunk.names[j]
    return f"record {i}"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()



def _main_then_broadcast(state: Any, compute: Callable[[], Any], what: str) -> Any:
    """Run ``compute`` on the main process only and give every rank its result.

    An exception on the main process is sent instead and re-raised on every rank, so no
    rank waits forever at the next collective.
    """
    from accelerate.utils import broadcast_object_list

    box: list[Any] = [None]
    if state.is_main_process:
        try:
            box[0] = ("ok", compute())
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank below
            logger.debug("%s failed", what, exc_info=True)
            box[0] = ("error", _portable_error(exc))
    broadcast_object_list(box)
    status, value = box[0]
    if status == "error":
        raise value
    return value

def _portable_error(exc: Exception) -> Exception:
    """An exception that survives pickling to the other ranks with its message."""
    try:
        import pickle

        return pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _describe_source(src: Any) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    if isinstance(src, (list, tuple)):
        return "::".join(str(s) for s in src)
    info = getattr(src, "info", None)
    return f"{type(src).__name__}({getattr(info, 'dataset_name', None) or ''})"


def _progress(items: list[str], enabled: bool, world: int) -> Iterable[str]:
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc="shards" + (f" (rank 0 of {world})" if world > 1 else ""), unit="shard")


def format_shard_summary(summary: ShardJobSummary) -> str:
    psnr = "n/a" if summary.mean_psnr_db is None else f"{summary.mean_psnr_db:.2f} dB"
    book = Path(summary.destination) / BOOKKEEPING
    lines = [
        f"protected   {summary.count} samples ({summary.images} images) in {summary.shards} shards -> "
        f"{summary.destination}",
        f"shards      {summary.shards_done} done now, {summary.shards_skipped} already complete"
        + (f", {len(summary.shards_failed)} FAILED (re-run to retry)" if summary.shards_failed else "")
        + (f", {summary.world_size} processes" if summary.world_size > 1 else ""),
        f"quarantined {summary.errors}" + (f" (see {summary.errors_file})" if summary.errors else ""),
        f"time        {summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s)",
        f"L-inf       max {summary.max_linf_levels} levels (budget {summary.budget_levels})",
        f"PSNR        mean {psnr}",
        f"summary     {book / 'job.json'}",
    ]
    for f in summary.shards_failed[:5]:
        lines.append(f"failed      {f['shard']}: {f['reason']}")
    return "\n".join(lines)


# ======================================================================== CLI
def wants_runner(args: Any) -> bool:
    """Whether ``udp-datasets protect`` should use the shard runner for these arguments."""
    return (getattr(args, "format", None) == "parquet" or looks_like_shards(str(args.src))
            or _launched_world_size() > 1 or bool(getattr(args, "num_processes", None) and args.num_processes > 1))


def _launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def run_cli(args: Any, config: ProtectionConfig) -> int:
    """``udp-datasets protect`` through the runner (shards, --format parquet, --num-processes)."""
    if getattr(args, "num_processes", None) and args.num_processes > 1 and _launched_world_size() <= 1:
        return relaunch(args)
    src: Any = args.src
    state = make_state()
    if not looks_like_shards(str(args.src)):
        if args.format not in (None, "parquet", "arrow") or (args.format == "arrow" and _explicit_format(args)):
            raise SourceError(f"--format {args.format} is not available for multi-process runs; "
                              "they write Parquet shards (--format parquet)")
        from ..sources import open_source

        with state.main_process_first():  # one process downloads / prepares the cache
            src = open_source(args.src, split=args.split)
    elif args.format == "imagefolder":
        raise SourceError("--format imagefolder does not apply to shard sources: the output keeps the "
                          "input's shard format")
    extensions = ([e.strip() for e in args.image_ext.split(",") if e.strip()]
                  if getattr(args, "image_ext", None) else IMAGE_EXTENSIONS)
    summary = run_shards(src, args.dst, config, image_column=_image_column(args), key_column=args.key_column,
                         overwrite=args.overwrite, image_extensions=extensions,
                         rows_per_shard=getattr(args, "rows_per_shard", None) or 10_000, split=args.split,
                         state=state)
    is_main = state.is_main_process
    if is_main:
        print(format_shard_summary(summary))
    if summary.shards_failed:
        return EXIT_FAILED
    if summary.errors and not args.allow_errors and not os.environ.get(CHILD_ENV):
        return EXIT_QUARANTINED if is_main else EXIT_OK
    return EXIT_OK


def _explicit_format(args: Any) -> bool:
    argv = getattr(args, "_argv", None) or []
    return any(a == "--format" or a.startswith("--format=") for a in argv)


def _image_column(args: Any) -> str | None:
    """``--image-column`` if the user gave one (its CLI default ``image`` means "auto" here)."""
    argv = getattr(args, "_argv", None)
    if argv is None:
        return args.image_column
    return args.image_column if any(a == "--image-column" or a.startswith("--image-column=")
                                    for a in argv) else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(argv: Sequence[str], num_processes: int, port: int | None = None) -> list[str]:
    """``accelerate launch`` for ``udp-datasets ARGV`` on ``num_processes`` local processes.

    ``--multi_gpu`` is what starts N processes (torchrun underneath) on a CPU-only
    machine too; ``--cpu --num_processes N`` would start only one.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port or free_port())]
    if num_processes > 1:
        cmd.append("--multi_gpu")
    return cmd + ["-m", "udp_datasets.cli", *argv]


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


def relaunch(args: Any) -> int:
    """Run this same ``protect`` command under ``accelerate launch`` with N processes and
    map the outcome to the CLI's exit codes (the launched ranks exit 0 on quarantine,
    since torchrun reports any non-zero status as a crash)."""
    argv = strip_option(getattr(args, "_argv", None) or sys.argv[1:], "--num-processes")
    cmd = launch_command(argv, args.num_processes)
    env = {**os.environ, CHILD_ENV: "1"}
    logger.info("launching %d processes: %s", args.num_processes, " ".join(cmd))
    code = subprocess.call(cmd, env=env)
    if code != 0:
        return code if code in (EXIT_USAGE,) else EXIT_FAILED
    job = Path(args.dst).expanduser() / BOOKKEEPING / "job.json"
    try:
        summary = json.loads(job.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return EXIT_FAILED
    if summary.get("shards_failed"):
        return EXIT_FAILED
    if summary.get("errors") and not args.allow_errors:
        return EXIT_QUARANTINED
    return EXIT_OK


# ================================================================== pipelines
PIPELINE_KINDS = ("hf_dataset", "webdataset", "parquet")
PIPELINE_KEYS = frozenset({"source", "destination", "split", "streaming", "rows_per_shard", "image_column",
                           "key_column", "image_extensions", "overwrite", "allow_errors", "protection"})


def load_pipeline_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A pipeline YAML (see ``pipelines/*.yaml``) with ``KEY=VALUE`` overrides applied.

    ``protection.steps=10`` sets a field of the ``protection:`` mapping (any
    :class:`ProtectionConfig` field); values are parsed as YAML (``null``, numbers...).
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of pipeline settings")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. protection.steps=10)")
        target = data
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    unknown = sorted(set(data) - PIPELINE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}; known: {sorted(PIPELINE_KEYS)}")
    for required in ("source", "destination"):
        if not data.get(required):
            raise ConfigError(f"{path}: '{required}' is required")
    return data


def open_hf_source(source: str, split: str | None = None, streaming: bool = False) -> Any:
    """A Hub id or local dataset (``save_to_disk`` folder, image folder, data files folder)
    as a ``Dataset``, or as an ``IterableDataset`` with ``streaming=True``."""
    import datasets

    from ..sources.hf import pick_split, is_saved_dataset, open_source

    if not streaming:
        return open_source(source, split=split)
    path = Path(source).expanduser()
    if path.is_dir() and is_saved_dataset(path):
        ds = pick_split(datasets.load_from_disk(str(path)), split, source)
        return ds.to_iterable_dataset(num_shards=max(1, len(ds.cache_files)))
    if path.is_dir():
        return pick_split(datasets.load_dataset(str(path), streaming=True), split, source)
    return pick_split(datasets.load_dataset(source, streaming=True), split, source)


def run_pipeline(kind: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pipelines/<kind>.py``: ``--config FILE [--set KEY=VALUE ...]``.

    Runs under ``accelerate launch`` (any number of processes) or plain ``python``.
    Exit status: 0 done, 3 samples quarantined (unless ``allow_errors``), 1 failed
    shards, 2 bad configuration or source.
    """
    import argparse

    if kind not in PIPELINE_KINDS:
        raise ValueError(f"unknown pipeline {kind!r}; one of {PIPELINE_KINDS}")
    parser = argparse.ArgumentParser(prog=f"pipelines/{kind}.py", description=f"udp-datasets {kind} pipeline")
    parser.add_argument("--config", required=True, help=f"pipeline YAML (see pipelines/{kind}.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set destination=out --set protection.steps=10")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        settings = load_pipeline_config(args.config, args.set)
        config = ProtectionConfig.from_dict(settings.get("protection") or {})
        state = make_state()
        src: Any = settings["source"]
        if kind == "hf_dataset":
            with state.main_process_first():
                src = open_hf_source(str(src), split=settings.get("split"),
                                     streaming=bool(settings.get("streaming", False)))
        else:
            want = "tar" if kind == "webdataset" else "parquet"
            wrong = [s.name for s in discover_shards(src) if s.kind != want]
            if wrong:
                raise SourceError(f"the {kind} pipeline takes {want} shards; got {wrong[:3]}")
        extensions = settings.get("image_extensions") or IMAGE_EXTENSIONS
        summary = run_shards(src, settings["destination"], config, image_column=settings.get("image_column"),
                             key_column=settings.get("key_column"), overwrite=bool(settings.get("overwrite")),
                             image_extensions=extensions, rows_per_shard=int(settings.get("rows_per_shard") or 10_000),
                             split=settings.get("split"), state=state)
    except (ConfigError, SourceError, OutputExistsError, ImageError) as exc:
        print(f"{kind} pipeline: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if state.is_main_process:
        print(format_shard_summary(summary))
    if summary.shards_failed:
        return EXIT_FAILED
    if summary.errors and not settings.get("allow_errors") and state.is_main_process:
        return EXIT_QUARANTINED
    return EXIT_OK
