"""Shard codecs: one input shard in as chunks of images to protect, the same shard out.

Why a codec layer: the shard job (:mod:`udp_datasets.jobs.shard_job`) must not care whether a
unit of work is a WebDataset tar, a Parquet file or a slice of a ``datasets`` dataset. Each
codec reads its unit as :class:`Chunk` s (a batch of *records*, the things that are kept or
quarantined whole, and the *images* inside them, the payloads to protect) and writes the
records back with the protected PNGs in place of the images, everything else untouched.
Chunks are cut at record boundaries, so a tar sample's images are never split, and are
bounded (``batch_size`` images, 32 MiB or 4096 samples), so memory does not grow with a shard.

:func:`dataset_units` names the units of a ``datasets`` source after the Hub's Parquet layout,
from the data alone, so a resumed job may use another number of processes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..sinks.parquet_writer import ParquetShardWriter, parquet_compression, replace_image_column
from ..sinks.tar_writer import TarShardWriter
from ..sources.columns import check_columns, drop_from_schema, image_cells
from ..sources.hf import SourceError
from ..sources.keys import png_member_name, split_key
from ..sources.parquet import find_image_column, iter_parquet_batches, open_parquet
from ..sources.shards import Shard
from ..sources.tar import ShardReadError, iter_tar_samples

MAX_CHUNK_BYTES = 32 << 20  # a tar chunk ends early at this many member bytes...
MAX_CHUNK_SAMPLES = 4096  # ...or samples (image-less samples weigh nothing otherwise)


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

    Records are kept or quarantined whole; images are the payloads to protect. A tar sample
    may hold several images or none, so the two are listed apart and ``record_of_image[j]``
    says which record image j belongs to. ``image_keys`` are the images' sample keys (they
    seed the per-sample randomness and name the manifest rows; ``None``: the protector's
    default, the pixel hash). ``problems`` marks records refused before protection.
    """

    record_keys: list[str | None]  # per record: its key in error records (None: unknown)
    images: list[Any]  # per image: the encoded payload
    record_of_image: list[int]  # per image: the index of its record
    image_keys: list[str] | None  # per image
    image_names: list[str]  # per image: how messages name it (member name, "SHARD row N")
    records: Any  # what the codec writes back: the tar samples, or the Arrow table
    row_group: Any = 0  # Parquet: the input row group the records came from
    problems: dict[int, str] = field(default_factory=dict)  # record index -> reason
    rows: list[int] | None = None  # table rows: index within the unit, for error records

    def record_name(self, record: int) -> str:
        """How an error record names a record without a key: its first image's name."""
        for j, owner in enumerate(self.record_of_image):
            if owner == record:
                return self.image_names[j]
        return f"record {record}"


class ShardCodec:
    """What every shard codec shares: reading chunks, and a writer to a temporary file that is
    closed on success or aborted (the caller's :func:`~udp_datasets.sinks.atomic.atomic_file`
    then removes it)."""

    writer: Any = None

    def chunks(self) -> Iterator[Chunk]:
        raise NotImplementedError

    def open(self, tmp: Path) -> None:
        raise NotImplementedError

    def write(self, chunk: Chunk, ok: list[bool], pngs: list[bytes | None]) -> None:
        """Write the records of ``chunk`` whose ``ok`` is true, with ``pngs`` (one per image)
        in place of their images."""
        raise NotImplementedError

    def close(self) -> None:
        assert self.writer is not None
        self.writer.close()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class TarCodec(ShardCodec):
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
            if n_images >= self.batch_size or n_bytes >= MAX_CHUNK_BYTES or len(pending) >= MAX_CHUNK_SAMPLES:
                yield self._chunk(pending)
                pending, n_images, n_bytes = [], 0, 0
        if pending:
            yield self._chunk(pending)

    def _chunk(self, samples: list[Any]) -> Chunk:
        chunk = Chunk(record_keys=[], images=[], record_of_image=[], image_keys=[], image_names=[],
                      records=samples)
        for i, sample in enumerate(samples):
            chunk.record_keys.append(sample.key if sample.key is not None else
                                     (sample.members[0].info.name if sample.images or sample.problem else None))
            problem = sample.problem if sample.problem is not None else _rename_clash(sample)
            if problem is not None:
                chunk.problems[i] = problem
            for j in sample.images:
                name = sample.members[j].info.name
                ext = split_key(name)[1] or name
                chunk.images.append(sample.members[j].data)
                chunk.record_of_image.append(i)
                single = len(sample.images) == 1 and sample.key is not None
                chunk.image_keys.append(sample.key if single else f"{sample.key}.{ext}")  # type: ignore[union-attr]
                chunk.image_names.append(name)
        return chunk

    def open(self, tmp: Path) -> None:
        self.writer = TarShardWriter(tmp, compress=self.unit.shard.compressed)  # type: ignore[union-attr]

    def write(self, chunk: Chunk, ok: list[bool], pngs: list[bytes | None]) -> None:
        assert self.writer is not None
        image_at = 0
        for i, sample in enumerate(chunk.records):
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


def _rename_clash(sample: Any) -> str | None:
    """Why a sample cannot be written: two members that would get one output name. An image
    ``KEY.jpg`` becomes ``KEY.png``, so ``KEY.jpg`` beside ``KEY.png``, or ``KEY.jpg`` beside
    ``KEY.jpeg`` (``.webp`` beside ``.bmp``...), or a member name repeated inside one sample,
    would write two members of the same name (readers keep one, or fail: "Duplicate field")."""
    images = set(sample.images)
    seen: dict[str, str] = {}
    for j, member in enumerate(sample.members):
        name = member.info.name
        out = png_member_name(name) if j in images else name
        if out in seen:
            first = seen[out]
            if first == name:
                return f"the sample has two members named {name!r}; the output cannot hold both"
            return (f"{first!r} and {name!r} would both be written as {out!r} (images become PNG); "
                    "give them distinct names")
        seen[out] = name
    return None


class TableCodec(ShardCodec):
    """Arrow tables (Parquet files, ``datasets`` slices): one row = one record."""

    def __init__(self, unit: WorkUnit, batch_size: int, image_column: str | None, key_column: str | None,
                 dataset: Any = None, drop_columns: tuple[str, ...] = ()):
        self.unit = unit
        self.batch_size = batch_size
        self.key_column = key_column
        self.dataset = dataset
        self.writer: ParquetShardWriter | None = None
        if unit.kind == "parquet":
            assert unit.shard is not None
            try:
                self.pf = open_parquet(unit.shard.url)
            except (OSError, ValueError) as exc:  # empty, truncated, not Parquet: a failed shard, named
                raise ShardReadError(f"{unit.shard.url}: not a readable Parquet file ({exc})") from exc
            self.schema = self.pf.schema_arrow
            self.compression = parquet_compression(self.pf)
        else:
            self.pf = None
            self.schema = _dataset_schema(dataset)
            self.compression = "snappy"
        self.image_column = find_image_column(self.schema, image_column)
        _check_image_type(self.schema, self.image_column, unit.source)
        # every other image column is dropped by name, or the unit is refused (sources.columns)
        self.drop = list(drop_columns)
        self.side_binary = check_columns(self.schema, self.image_column, self.drop, unit.source)
        self.out_schema = drop_from_schema(self.schema, self.drop)
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
        for row_group, table in self._tables():
            images = table.column(self.image_column).to_pylist()
            keys = ([None if k is None else str(k) for k in table.column(self.key_column).to_pylist()]
                    if self.key_column else None)
            rows = list(range(row, row + len(images)))
            row += len(images)
            names = [f"{self.unit.name} row {r}" for r in rows]
            chunk = Chunk(record_keys=keys if keys is not None else [None] * len(images), images=images,
                          record_of_image=list(range(len(images))), image_keys=None, image_names=names,
                          records=table, row_group=row_group, rows=rows)
            if keys is not None:
                chunk.image_keys = [k if k is not None else "" for k in keys]
                for i, k in enumerate(keys):
                    if k is None:
                        chunk.problems[i] = f"key column {self.key_column!r} is null"
            for i, reason in image_cells(table, self.side_binary).items():
                chunk.problems.setdefault(i, reason)
            yield chunk

    def open(self, tmp: Path) -> None:
        self.writer = ParquetShardWriter(tmp, self.out_schema, compression=self.compression)

    def write(self, chunk: Chunk, ok: list[bool], pngs: list[bytes | None]) -> None:
        assert self.writer is not None
        kept = [p for p, good in zip(pngs, ok) if good]
        table = replace_image_column(chunk.records, self.image_column, ok, kept)  # type: ignore[arg-type]
        if self.drop:
            table = table.drop_columns(self.drop)
        self.writer.write(table, chunk.row_group)


def make_codec(unit: WorkUnit, batch_size: int, *, image_extensions: frozenset[str], image_column: str | None,
               key_column: str | None, dataset: Any = None, drop_columns: tuple[str, ...] = ()) -> ShardCodec:
    """The codec for ``unit``: tar units by ``image_extensions``, tables by ``image_column``."""
    batch_size = max(batch_size, 1)
    if unit.kind == "tar":
        return TarCodec(unit, batch_size, image_extensions)
    return TableCodec(unit, batch_size, image_column, key_column, dataset=dataset, drop_columns=drop_columns)


def _check_image_type(schema: Any, column: str, source: str) -> None:
    import pyarrow as pa

    typ = schema.field(column).type
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        return
    if pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0:
        inner = typ.field(typ.get_field_index("bytes")).type
        if pa.types.is_binary(inner) or pa.types.is_large_binary(inner):
            return
        raise SourceError(f"{source}: image column {column!r} is a struct whose 'bytes' field has type {inner}; it "
                          "must be binary (a Hugging Face Image struct<bytes: binary, path: string>): re-encode "
                          "the column as image bytes, or name another with --image-column")
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


_DATASET_UNIT = re.compile(r"^(.*)-\d{5}-of-\d{5}\.parquet$")


def stale_dataset_units(marked: Iterable[str], units: list[WorkUnit]) -> list[str]:
    """Units an earlier run wrote for the same dataset split that these ``units`` do not hold
    (``data/train-00000-of-00002.parquet`` beside this run's ``...-of-00004``: another
    ``rows_per_shard``). Left in place they would put every row in the output twice."""
    current = {u.name for u in units}
    prefixes = {m.group(1) for u in units if u.kind == "hf" and (m := _DATASET_UNIT.match(u.name))}
    return sorted(n for n in marked if n not in current and (m := _DATASET_UNIT.match(n)) and m.group(1) in prefixes)


def shard_units(shards: Iterable[Shard]) -> list[WorkUnit]:
    """One work unit per input shard, named after it."""
    return [WorkUnit(name=s.name, kind=s.kind, source=s.url, shard=s) for s in shards]
