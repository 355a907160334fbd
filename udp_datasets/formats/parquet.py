"""Parquet shards (and ``datasets`` slices written as Parquet): reading, the key rule, the output
names and writing, in one codec.

Part of :mod:`udp_datasets.formats` (see :mod:`~udp_datasets.formats.codec`).

**Reading.** :class:`TableCodec` reads a Parquet file by record batches within each row group
(:func:`udp_datasets.sources.parquet.iter_parquet_batches`, so a shard is never loaded whole), or a
slice of a ``datasets`` dataset as Arrow; one row is one record, its image column
(:func:`~udp_datasets.sources.parquet.find_image_column`) the image.

**Key rule.** A row's key is its ``key_column`` value (default: a ``__key__`` column if present,
else none, and the protector seeds by the pixel hash); a null key quarantines the row.

**Output names.** An image cell's ``path`` gets the ``.png`` suffix of every protected image
(:func:`png_path`, over :func:`~udp_datasets.formats.codec.png_name`).

**Writing.** Output keeps the input's schema, codec and row groups; only images change: a
protected Parquet shard must read back like its input (same columns and types, a Hugging Face
``Image`` feature still an ``Image``, same compression) and a resumed job must write the same
bytes as an uninterrupted one. pyarrow's ``ParquetWriter`` gets the input's Arrow schema (metadata
included) and compression codec; output row groups follow the input's, split only when a group's
buffered rows exceed ``flush_bytes`` (bounded memory). :func:`replace_image_column` swaps in the
PNG bytes and leaves every other value as Arrow read it. The writer writes to whatever path it is
given; the shard job gives it a temporary from :func:`udp_datasets.sinks.atomic.atomic_file`, which
fsyncs and renames it into place.
"""


from __future__ import annotations

import contextlib
import os
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

from ..sources.columns import check_columns, drop_from_schema, image_cells
from ..sources.errors import SourceError
from ..sources.parquet import find_image_column, iter_parquet_batches, open_parquet
from ..sources.shards import ShardReadError
from .codec import Chunk, ShardCodec, WorkUnit, png_name


def parquet_compression(pf: Any) -> str:
    """The codec of the input's first column chunk, as a ``ParquetWriter`` name."""
    names = {"UNCOMPRESSED": "none", "SNAPPY": "snappy", "GZIP": "gzip", "BROTLI": "brotli",
             "ZSTD": "zstd", "LZ4": "lz4", "LZ4_RAW": "lz4"}
    try:
        if pf.metadata.num_row_groups and pf.metadata.num_columns:
            return names.get(str(pf.metadata.row_group(0).column(0).compression).upper(), "snappy")
    except (AttributeError, IndexError):  # pragma: no cover - unusual metadata
        pass
    return "snappy"


class ParquetShardWriter:
    """``ParquetWriter`` that follows the input's row groups with bounded buffering."""

    def __init__(self, path: str | os.PathLike, schema: Any, compression: str = "snappy",
                 flush_bytes: int = 64 << 20):
        import pyarrow.parquet as pq

        self.path = Path(path)
        self.schema = schema
        self.flush_bytes = flush_bytes
        self._writer = pq.ParquetWriter(str(self.path), schema, compression=compression)
        self._pending: list[Any] = []
        self._pending_bytes = 0
        self._row_group: Any = None

    def write(self, table: Any, row_group: Any = 0) -> None:
        """Buffer ``table`` (rows of the input's ``row_group``); a new group flushes the last."""
        import pyarrow as pa

        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if self._row_group is not None and row_group != self._row_group:
            self.flush()
        self._row_group = row_group
        if table.num_rows == 0:
            return
        self._pending.append(table.replace_schema_metadata(self.schema.metadata))
        self._pending_bytes += table.nbytes
        if self._pending_bytes >= self.flush_bytes:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._pending, self._pending_bytes = [], 0

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


def replace_image_column(table: Any, column: str, keep: Sequence[bool], pngs: Sequence[bytes]) -> Any:
    """Drop the rows where ``keep`` is false and put ``pngs`` into the kept rows' images.

    Every other column is taken from the input with Arrow's ``filter``, so its values
    (and type) are exactly the input's. The image column keeps its type: ``binary``
    gets the PNG bytes, a ``struct<bytes, path>`` (Hugging Face ``Image``) gets the
    bytes and a ``.png`` path; other struct fields are kept.
    """
    import pyarrow as pa

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    kept = table.filter(pa.array(list(keep), type=pa.bool_()))
    if kept.num_rows != len(pngs):
        raise ValueError(f"{kept.num_rows} kept rows but {len(pngs)} protected images")
    idx = kept.schema.get_field_index(column)
    fld = kept.schema.field(idx)
    typ = fld.type
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ):
        new = pa.array(list(pngs), type=typ)
    elif pa.types.is_struct(typ) and typ.get_field_index("bytes") >= 0:
        old = kept.column(idx).combine_chunks() if kept.num_rows else pa.array([], type=typ)
        children = []
        for j in range(typ.num_fields):
            child = typ.field(j)
            if child.name == "bytes":
                children.append(pa.array(list(pngs), type=child.type))
            elif child.name == "path" and (pa.types.is_string(child.type) or pa.types.is_large_string(child.type)):
                children.append(pa.array([png_path(p) for p in old.field(j).to_pylist()], type=child.type))
            else:
                children.append(old.field(j))
        new = pa.StructArray.from_arrays(children, fields=[typ.field(j) for j in range(typ.num_fields)])
    else:
        raise TypeError(f"image column {column!r} has type {typ}; expected binary or a struct with a "
                        "'bytes' field (a Hugging Face Image column)")
    return kept.set_column(idx, fld, new)


def png_path(path: str | None) -> str | None:
    """The ``path`` of a protected image column entry: ``.png`` suffix, and only the
    base name when the source path was absolute (a local path means nothing to readers
    of the published data)."""
    if not path:
        return path
    p = PurePosixPath(path)
    if p.is_absolute() or "\\" in path:
        p = PurePosixPath(p.name.rsplit("\\", 1)[-1])
    if not p.name:
        return path
    return png_name(str(p))


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
