"""The shard job: protect sharded datasets at scale, resumable, crash-safe, on many processes.

    udp-datasets protect 'data/shard-{000000..000099}.tar' out/ --surrogate S --num-processes 4
    accelerate launch -m udp_datasets.cli protect data/ out/ --surrogate S
    run_shards("data/*.parquet", "out", config)                       # Python
    run_shard_job(ShardJobSpec("data/*.parquet", "out", config))       # the same, from a spec

Why a second job beside :mod:`udp_datasets.jobs.dataset_job`: data that does not fit one
``datasets`` cache, or that must be spread over many GPUs and nodes and survive being killed,
is protected one input shard at a time, each shard written, checked and marked done on its
own. What a job is asked to do is one :class:`~udp_datasets.jobs.shard_spec.ShardJobSpec`
(built alike by the command line, the pipelines and :func:`run_shards`), run by
:func:`run_shard_job`. This module is that job's bookkeeping (what is pending, done or foreign,
what each rank does, the merged record); the pieces it stands on are the format codecs
(:mod:`udp_datasets.formats`: a shard in and out), :mod:`~udp_datasets.jobs.background` (reading and writing behind protection),
:mod:`~udp_datasets.jobs.distributed` (accelerate) and :mod:`~udp_datasets.records.summary` (the
record). The command line around it is :mod:`udp_datasets.cli.launch`.

**Work units.** One input shard (a WebDataset tar, a Parquet file, or a slice of a
``datasets`` dataset) is one unit: read -> protect -> write to a hidden temporary
name -> fsync -> atomic rename to the shard's own name under DST -> per-shard
errors and manifest -> completion marker, written last (also temp + rename, all through
:mod:`udp_datasets.sinks.atomic`). A unit whose marker is present is complete; anything else
is redone from scratch, so a run killed at any moment (SIGKILL included) resumes to output
that is byte for byte what an uninterrupted run writes (tar and Parquet output is
deterministic, see :mod:`udp_datasets.formats.webdataset` and
:mod:`udp_datasets.formats.parquet`; per-sample randomness is keyed by the sample key, so
batching and the rank that runs a shard do not matter).

**Layout.** DST mirrors the input: same shard names (and sub-folders), same samples
in the same order, every non-image member / column unchanged; images become PNG
(``KEY.jpg`` -> ``KEY.png``). The job's own files live in ``DST/.udp/``:

    .udp/job.json                  job summary (main process, when every rank is done)
    .udp/manifest.parquet          all per-shard manifests merged (records.manifest.MANIFEST_SCHEMA)
    .udp/errors.jsonl              every quarantined sample: key, shard, reason
    .udp/surrogate/                the surrogate fitted for this job (when none was given)
    .udp/shards/NAME.done.json     completion marker with the shard's stats
    .udp/shards/NAME.manifest.parquet, NAME.errors.jsonl
    .udp/ranks/rank-00000.json     which shards each rank did in the last run

A hidden folder rather than files beside the shards, because ``datasets`` and shell
globs skip hidden paths: ``load_dataset("parquet", data_dir=DST)``,
``wds.WebDataset("DST/*.tar")`` and ``upload_folder`` of the shards see only data.

**Markers and resume.** A marker records the *job id* (:func:`job_hash`; the markers' and
the summary's ``config_hash``): the protection config's hash with the surrogate identified by
its weights' SHA-256 (not its path, so a moved DST still resumes), plus the options that
change output bytes (image column, key column, image extensions). A re-run skips shards
whose marker matches and whose output file has the recorded size, redoes the rest, and
refuses shards marked with another job id unless ``overwrite=True``.

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
images, read ``prefetch`` chunks ahead and written ``prefetch`` chunks behind the
protector. Nothing is kept per sample across chunks except small manifest rows, which
stream into a per-shard Parquet.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from ..config import ConfigError, ProtectionConfig
from ..images import FailedImage, ImageError, ProtectedImage
from ..protector import Protector
from ..sinks.atomic import (OutputExistsError, atomic_directory, atomic_file, is_temp_name, remove_path,
                            write_bytes_atomic, write_json_atomic)
from ..sinks.lock import destination_lock
from ..formats.codec import Chunk, ShardCodec, WorkUnit
from ..formats.units import dataset_units, make_codec, shard_units, stale_dataset_units
from ..sources.errors import SourceError
from ..sources.shards import ShardReadError, discover_shards
from .background import ReadAhead, WriteBehind
from .distributed import main_then_broadcast, make_state
from .shard_spec import ShardJobSpec
from ..records.manifest import MANIFEST_SCHEMA, file_sha256, manifest_digest, manifest_table
from ..records.names import (BOOKKEEPING, ERRORS_FILE, JOB_RECORD, MANIFEST_FILE, MARKER_SUFFIX, RANKS_FOLDER,
                             SHARD_ERRORS_SUFFIX, SHARD_MANIFEST_SUFFIX, SHARDS_FOLDER, SURROGATE_FOLDER)
from ..records.signing import sign_record
from ..records.summary import JobSummary, Tally, rate, utc_now
from ..records.versions import library_versions

logger = logging.getLogger(__name__)

SHARD_JOB_VERSION = 1  # hashed into every job id under its 0.1 key, "runner" (renamed, every job id would change)


class ConfigMismatchError(ConfigError):
    """DST holds shards (or a fitted surrogate) made with another config."""


def job_hash(config: ProtectionConfig, surrogate_sha256: str | None, *, image_column: str | None,
             key_column: str | None, image_extensions: Iterable[str], drop_columns: Iterable[str] = (),
             generator_sha256: str | None = None) -> str:
    """The job id: the identity of a job's output bytes (see the module docstring).

    Two runs with the same job id write the same bytes for the same shard, so a marker
    carrying it proves the shard need not be redone; ``batch_size`` and ``device`` are
    left out because they do not change the bytes.
    """
    payload = {
        "config": config.replace(surrogate=None, surrogate_revision=None).hash(),
        "surrogate_sha256": surrogate_sha256 if config.surrogate is not None else None,
        "image_column": image_column, "key_column": key_column,
        "image_extensions": sorted(image_extensions), "runner": SHARD_JOB_VERSION,
    } | ({"drop_columns": sorted(drop_columns)} if drop_columns else {}) | (
        {"generator_sha256": generator_sha256} if generator_sha256 else {})  # the generator engines' weights
    canon = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


class ShardJob:
    """One run of the shard job a :class:`~udp_datasets.jobs.shard_spec.ShardJobSpec` describes, on this
    process (see the module docstring); ``state`` is an ``accelerate.PartialState`` (default:
    :func:`make_state`). Its attributes are the spec's settings, DST resolved."""

    def __init__(self, spec: ShardJobSpec, state: Any = None):
        self.spec = spec
        self.src = spec.source
        self.dst = Path(spec.destination).expanduser()
        self.config = spec.config
        self.image_column, self.key_column = spec.image_column, spec.key_column
        self.image_extensions: frozenset[str] = spec.image_extensions  # type: ignore[assignment]
        self.drop_columns: tuple[str, ...] = spec.drop_columns  # type: ignore[assignment]
        self.overwrite, self.prefetch, self.progress = spec.overwrite, spec.prefetch, spec.progress
        self.image_root, self.sign_key = spec.image_root, spec.sign_key  # sign_key: records.signing
        self.state = state
        self.book = self.dst / BOOKKEEPING
        self.record_file = self.dst / JOB_RECORD
        self._dataset = None if isinstance(self.src, (str, os.PathLike, list, tuple)) else self.src

    # ------------------------------------------------------------------ units
    def units(self) -> list[WorkUnit]:
        """Every unit of SRC in order; their names are the output names (see the codecs)."""
        if self._dataset is not None:
            return dataset_units(self._dataset, self.spec.rows_per_shard, self.spec.split)
        return shard_units(discover_shards(self.src if isinstance(self.src, (list, tuple)) else str(self.src)))

    def _codec(self, unit: WorkUnit) -> ShardCodec:
        return make_codec(unit, self.config.batch_size, image_extensions=self.image_extensions,
                          image_column=self.image_column, key_column=self.key_column, dataset=self._dataset,
                          drop_columns=self.drop_columns)

    def marker_path(self, unit_name: str) -> Path:
        """Where a unit's completion marker lives; its presence is what "done" means."""
        return self.dst / SHARDS_FOLDER / f"{unit_name}{MARKER_SUFFIX}"

    # -------------------------------------------------------------------- run
    def run(self) -> JobSummary:
        """Protect the pending shards on this rank; every rank returns the merged summary. The main
        process holds DST's lock (:mod:`udp_datasets.sinks.lock`) from preparing DST to the summary."""
        with contextlib.ExitStack() as self._held:
            return self._run()

    def _run(self) -> JobSummary:
        start, started_at = time.perf_counter(), utc_now()
        state = self.state if self.state is not None else make_state()
        rank, world = state.process_index, state.num_processes
        units = self.units()
        by_name = {u.name: u for u in units}
        self._check_paths(units)
        tables = [u for u in units if u.kind != "tar"]
        with contextlib.suppress(ShardReadError):  # unreadable: that shard fails on its own, below
            if tables:  # a second image column is a usage error up front (the other shards fail with it)
                self._codec(tables[0])
        if self.drop_columns and len(tables) < len(units):
            raise SourceError(f"--drop-columns {','.join(self.drop_columns)}: tar shards have members, not columns")

        # 1. main process: prepare DST, fit the surrogate if needed; everyone gets the outcome
        config_dict, fit_info = main_then_broadcast(state, lambda: self._prepare(units), "prepare")
        config = ProtectionConfig.from_dict(config_dict)
        if config.device == "auto" and world > 1:
            config = config.replace(device=str(state.device))

        # 2. every rank loads the surrogate once, on its device
        protector = Protector(config, progress=False, image_root=self.image_root)
        protector.prepare_surrogate(state.local_process_index)
        ref = protector.surrogate_ref
        job_id = job_hash(config, ref.sha256 if ref else None, image_column=self.image_column,
                         key_column=self.key_column, image_extensions=self.image_extensions,
                         drop_columns=self.drop_columns, generator_sha256=protector.engine.generator_sha256)

        # 3. main scans the markers; everyone works on the same pending list
        pending, skipped = main_then_broadcast(state, lambda: self._scan(units, job_id), "scan")
        mine = pending[rank::world]
        logger.info("rank %d/%d: %d of %d pending shards (%d complete already)", rank, world, len(mine),
                    len(pending), len(skipped))

        # 4. work
        done, failed = [], []
        bar = _progress(mine, self.progress and state.is_main_process, world)
        for name in bar:
            unit = by_name[name]
            try:
                stats = self._process(unit, protector, state, job_id)
                done.append({"shard": name, "count": stats["count"], "errors": stats["errors"],
                             "seconds": stats["seconds"]})
            except (ShardReadError, SourceError, ImageError, OSError, ValueError, TypeError) as exc:
                logger.error("shard %s failed: %s", name, exc)
                failed.append({"shard": name, "reason": str(exc)})
        write_json_atomic(self.dst / RANKS_FOLDER / f"rank-{rank:05d}.json",
                          {"rank": rank, "world_size": world, "shards": done, "failed": failed,
                           "device": str(protector.prepare_surrogate(state.local_process_index).device),
                           "seconds": round(time.perf_counter() - start, 3)})

        # 5. main merges and summarises once every rank is done
        state.wait_for_everyone()
        if state.is_main_process:
            summary = self._finish(units, config, ref, job_id, fit_info, world, skipped,
                                   time.perf_counter() - start, started_at, protector.engine.generator_ref)
            write_json_atomic(self.record_file, summary.to_dict())
            if self.sign_key is not None:
                sign_record(self.record_file, self.sign_key)
        state.wait_for_everyone()
        return JobSummary.from_dict(json.loads(self.record_file.read_text(encoding="utf-8")))

    # -------------------------------------------------------------- stages
    def _check_paths(self, units: list[WorkUnit]) -> None:
        """Refuse a DST that is a file or would overwrite the job's own input, before any work."""
        if self.dst.exists() and not self.dst.is_dir():
            raise OutputExistsError(f"{self.dst} exists and is not a folder")
        dst = self.dst.resolve()
        for unit in units:
            if unit.shard is not None and Path(unit.shard.url).exists():
                if Path(unit.shard.url).resolve() == (dst / unit.name).resolve():
                    raise OutputExistsError(f"DST {self.dst} would overwrite its own input {unit.shard.url}; "
                                            "choose another destination")

    def _prepare(self, units: list[WorkUnit]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Main process: claim DST (its lock first), clean temporaries, resolve (fit) the surrogate."""
        self._held.enter_context(destination_lock(self.dst))
        if self.dst.exists() and any(self.dst.iterdir()) and not self.book.is_dir() and not self.overwrite:
            raise OutputExistsError(
                f"{self.dst} is not empty and is not the output of a shard job (no {BOOKKEEPING}/); "
                "choose another destination, or pass --overwrite to write into it")
        (self.dst / SHARDS_FOLDER).mkdir(parents=True, exist_ok=True)
        removed = 0
        for root, dirs, files in os.walk(self.dst):
            for name in files + dirs:
                if is_temp_name(name):
                    remove_path(Path(root) / name)
                    removed += 1
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run", removed)
        shutil.rmtree(self.dst / RANKS_FOLDER, ignore_errors=True)
        if self.config.surrogate is not None:
            return self.config.to_dict(), None
        return self._fitted_surrogate(units)

    def _fitted_surrogate(self, units: list[WorkUnit]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The surrogate in ``.udp/surrogate``: reused when fitted with this config, else fitted
        once here, so every rank and every re-run protects with the same weights."""
        folder = self.dst / SURROGATE_FOLDER
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
        protector = Protector(self.config, progress=self.progress, image_root=self.image_root)
        with atomic_directory(folder, overwrite=True) as tmp:
            result = protector.fit(images, output_dir=tmp)
        return self.config.replace(surrogate=str(folder.resolve())).to_dict(), result.to_dict()

    def _fit_images(self, units: list[WorkUnit]) -> list[Any]:
        """The first ``fit_max_samples`` images in shard order (bounded memory)."""
        limit = self.config.fit_max_samples
        images: list[Any] = []
        for unit in units:
            for chunk in self._codec(unit).chunks():
                images.extend(img for img, record in zip(chunk.images, chunk.record_of_image)
                              if record not in chunk.problems and img is not None)
                if len(images) >= limit:
                    return images[:limit]
        if not images:
            raise ImageError("fit: the source has no images")
        return images

    def _scan(self, units: list[WorkUnit], job_id: str) -> tuple[list[str], list[str]]:
        """Main process: (pending, skipped) unit names. A shard is skipped only if its marker
        carries this job id and its output still has the recorded size; shards of another
        job id are refused unless ``overwrite`` (they would mix two configs in one dataset)."""
        pending, skipped, foreign = [], [], []
        shards = self.dst / SHARDS_FOLDER
        stale = stale_dataset_units([p.relative_to(shards).as_posix()[:-len(MARKER_SUFFIX)]
                                     for p in shards.rglob(f"*{MARKER_SUFFIX}")], units)
        if stale and not self.overwrite:
            raise ConfigMismatchError(
                f"{self.dst} holds {len(stale)} shard(s) an earlier run wrote that this job would not ({stale[0]}"
                f"{', ...' if len(stale) > 1 else ''}): the output-shaping options differ (another --rows-per-shard "
                "names the shards otherwise); use another DST, or --overwrite to replace them")
        for name in stale:  # --overwrite: the earlier run's shards go, or the rows would be there twice
            for path in (self.dst / name, self.marker_path(name), shards / f"{name}{SHARD_MANIFEST_SUFFIX}",
                         shards / f"{name}{SHARD_ERRORS_SUFFIX}"):
                path.unlink(missing_ok=True)
        for unit in units:
            marker = self._read_marker(unit.name)
            if marker is None:
                pending.append(unit.name)
                continue
            if marker.get("config_hash") != job_id:
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
                f"(hash {job_id}): {listing}; use another DST, or --overwrite to redo them")
        return pending, skipped

    def _read_marker(self, name: str) -> dict[str, Any] | None:
        """A unit's marker, or None when it is missing or unreadable (the unit is then redone)."""
        path = self.marker_path(name)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            logger.warning("unreadable marker %s: redoing the shard", path)
            return None

    # ------------------------------------------------------------- one shard
    def _process(self, unit: WorkUnit, protector: Protector, state: Any, job_id: str) -> dict[str, Any]:
        """Protect one unit: shard and manifest through temporaries, then errors, then the marker
        (last, so a shard is done only once everything it leaves is in place); returns the marker."""
        t0 = time.perf_counter()
        final = self.dst / unit.name
        base = self.dst / SHARDS_FOLDER / unit.name
        marker = self.marker_path(unit.name)
        marker.unlink(missing_ok=True)  # from here on the shard is not complete
        codec = self._codec(unit)
        errors: list[dict[str, Any]] = []
        tally = Tally()
        manifest_final = base.parent / f"{base.name}{SHARD_MANIFEST_SUFFIX}"
        manifest_final.parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        with atomic_file(final) as tmp, atomic_file(manifest_final) as mtmp:
            codec.open(tmp)
            mwriter = pq.ParquetWriter(str(mtmp), MANIFEST_SCHEMA)
            writer = WriteBehind(codec.write, self.prefetch)
            reader = ReadAhead(codec.chunks(), self.prefetch)
            try:
                for chunk in reader:
                    ok, pngs, good = self._protect_chunk(chunk, protector, state, unit, errors, tally)
                    writer.put(chunk, ok, pngs)
                    if good:
                        mwriter.write_table(manifest_table(good, unit.name, job_id))
                writer.finish()
                codec.close()
                mwriter.close()
            except BaseException:
                writer.close()
                codec.abort()
                with contextlib.suppress(Exception):
                    mwriter.close()
                raise
            finally:
                reader.close()
        errors_file = base.parent / f"{base.name}{SHARD_ERRORS_SUFFIX}"
        if errors:
            write_bytes_atomic(errors_file, "".join(json.dumps(e, ensure_ascii=False) + "\n"
                                                    for e in errors).encode())
        else:
            errors_file.unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        record = {
            "shard": unit.name, "source": unit.source, "status": "done", "config_hash": job_id,
            **tally.to_marker(), "seconds": round(seconds, 3), "images_per_second": rate(tally.images, seconds),
            "bytes": final.stat().st_size, "sha256": file_sha256(final),
            "rank": state.process_index, "world_size": state.num_processes,
            "errors_file": str(errors_file.relative_to(self.dst)) if errors else None,
            "manifest": str(manifest_final.relative_to(self.dst)),
        }
        if tally.max_linf > self.config.budget_levels:  # defence in depth: never mark this done
            raise RuntimeError(f"internal error: shard {unit.name} has L-inf {tally.max_linf} over budget")
        write_json_atomic(marker, record)  # last: the shard is complete from here on
        logger.info("shard %s: %d samples, %d quarantined, %.1f s", unit.name, tally.count, tally.errors,
                    seconds)
        return record

    def _protect_chunk(self, chunk: Chunk, protector: Protector, state: Any, unit: WorkUnit,
                       errors: list[dict[str, Any]], tally: Tally,
                       ) -> tuple[list[bool], list[bytes | None], list[ProtectedImage]]:
        """Protect a chunk's images; returns (ok per record, PNG per image, protected images).

        A record with any image that fails is quarantined whole (its other images are not
        written either: a sample is never published half protected) and logged in ``errors``.
        """
        n = len(chunk.record_keys)
        todo = [j for j, record in enumerate(chunk.record_of_image) if record not in chunk.problems]
        results: list[ProtectedImage | FailedImage | None] = [None] * len(chunk.images)
        if todo:
            keys = [chunk.image_keys[j] for j in todo] if chunk.image_keys is not None else None
            got = protector.protect_images([chunk.images[j] for j in todo], keys=keys,
                                           rank=state.local_process_index, names=[chunk.image_names[j] for j in todo])
            for j, r in zip(todo, got):
                results[j] = r
        reasons: dict[int, str] = dict(chunk.problems)
        images_of = Counter(chunk.record_of_image)
        for j, record in enumerate(chunk.record_of_image):
            r = results[j]
            if isinstance(r, FailedImage) and record not in reasons:
                reasons[record] = r.reason if images_of[record] == 1 else f"{chunk.image_names[j]}: {r.reason}"
        ok = [i not in reasons for i in range(n)]
        for i in range(n):
            if not ok[i]:
                error: dict[str, Any] = {"key": chunk.record_keys[i] if chunk.record_keys[i] is not None else
                                         chunk.record_name(i), "shard": unit.name, "reason": reasons[i]}
                if chunk.rows is not None:
                    error["row"] = chunk.rows[i]
                errors.append(error)
                tally.errors += 1
            elif images_of[i]:
                tally.count += 1
            else:
                tally.passthrough += 1
        pngs: list[bytes | None] = []
        good: list[ProtectedImage] = []
        for j, record in enumerate(chunk.record_of_image):
            r = results[j]
            if ok[record] and isinstance(r, ProtectedImage):
                pngs.append(r.png)
                good.append(r)
                tally.add(r.linf, r.psnr)
            else:
                pngs.append(None)
        return ok, pngs, good

    # --------------------------------------------------------------- finish
    def _finish(self, units: list[WorkUnit], config: ProtectionConfig, ref: Any, job_id: str,
                fit_info: dict[str, Any] | None, world: int, skipped: list[str], seconds: float,
                started_at: str, generator: dict[str, Any] | None) -> JobSummary:
        """Main process, after every rank is done: merge the markers of this job id (shards done
        by earlier runs included) into one manifest, one errors file and the summary."""
        import pyarrow.parquet as pq

        ranks = []
        for path in sorted((self.dst / RANKS_FOLDER).glob("rank-*.json")):
            ranks.append(json.loads(path.read_text(encoding="utf-8")))
        done_now = sum(len(r["shards"]) for r in ranks)
        failed = [f for r in ranks for f in r["failed"]]
        totals = Tally()
        images_now = 0
        now = {d["shard"] for r in ranks for d in r["shards"]}
        manifest_path = self.book / MANIFEST_FILE
        errors_path = self.book / ERRORS_FILE
        with atomic_file(manifest_path) as mtmp, atomic_file(errors_path) as etmp, open(etmp, "wb") as efh:
            writer = pq.ParquetWriter(str(mtmp), MANIFEST_SCHEMA)
            for unit in units:
                marker = self._read_marker(unit.name)
                if marker is None or marker.get("config_hash") != job_id:
                    continue
                totals.merge(Tally.from_marker(marker))
                if unit.name in now:
                    images_now += int(marker.get("images") or 0)
                if marker.get("manifest"):
                    writer.write_table(pq.read_table(self.dst / marker["manifest"]).cast(MANIFEST_SCHEMA))
                if marker.get("errors_file"):
                    efh.write((self.dst / marker["errors_file"]).read_bytes())
            writer.close()
        if totals.errors == 0:
            errors_path.unlink(missing_ok=True)
        return JobSummary(
            source=_source_text(self.src), destination=str(self.dst), shards=len(units),
            shards_done=done_now, shards_skipped=len(skipped), shards_failed=failed,
            count=totals.count, images=totals.images, errors=totals.errors,
            passthrough=totals.passthrough, seconds=round(seconds, 3),
            images_per_second=rate(images_now, seconds), max_linf_levels=totals.max_linf,
            budget_levels=config.budget_levels, mean_psnr_db=totals.mean_psnr_db,
            config=config.replace(device="auto").to_dict(), config_hash=job_id,
            protection_config_hash=config.hash(), surrogate=ref.to_dict() if ref else None, world_size=world,
            generator=generator,
            ranks=[{k: r[k] for k in ("rank", "device", "seconds")} | {"shards": [d["shard"] for d in r["shards"]]}
                   for r in ranks],
            fit=fit_info, errors_file=str(errors_path) if totals.errors else None,
            manifest=str(manifest_path), manifest_sha256=manifest_digest(manifest_path),
            versions=library_versions(), started_at=started_at,
            finished_at=utc_now(), record_file=str(self.record_file))


def run_shard_job(spec: ShardJobSpec, state: Any = None) -> JobSummary:
    """Run the shard job ``spec`` describes on this process (every rank calls it; every rank returns
    the merged summary). The one entry point the command line, the pipelines and Python share."""
    return ShardJob(spec, state).run()


def run_shards(src: Any, dst: str | os.PathLike, config: ProtectionConfig, *, state: Any = None,
               **settings: Any) -> JobSummary:
    """Protect every shard of SRC into DST, from Python: ``settings`` are
    :class:`~udp_datasets.jobs.shard_spec.ShardJobSpec`'s (``key_column=``, ``rows_per_shard=`` ...)."""
    return run_shard_job(ShardJobSpec(src, dst, config, **settings), state)


def _source_text(src: Any) -> str:
    """SRC as the summary's ``source`` names it (a spec as given, or a dataset's type and name)."""
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
