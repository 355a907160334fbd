"""Parquet output that keeps the input's schema, codec and row groups; only images change.

Why: a protected Parquet shard must read back like its input (same columns and types, a
Hugging Face ``Image`` feature still an ``Image``, same compression) and a resumed job must
write the same bytes as an uninterrupted one. pyarrow's ``ParquetWriter`` gets the input's
Arrow schema (metadata included) and compression codec; output row groups follow the
input's, split only when a group's buffered rows exceed ``flush_bytes`` (bounded memory).
:func:`replace_image_column` swaps in the PNG bytes and leaves every other value as Arrow
read it.

The writer writes to whatever path it is given; the shard job gives it a temporary from
:func:`udp_datasets.sinks.atomic.atomic_file`, which fsyncs and renames it into place.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Sequence

from ..sources.keys import png_path


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
