"""Shard writers: deterministic tar and Parquet output, written crash-safely.

Everything here serves two promises of :mod:`udp_datasets.runner`:

1. *No partial file under a final name.* :func:`atomic_file` hands out a hidden
   temporary sibling (``.NAME.tmp-PID-RANDOM``), and only after the data is
   flushed and ``fsync``-ed is it renamed over the final name (``os.replace`` is
   atomic on POSIX), then the folder is fsynced so the rename survives a power cut.
2. *Byte-identical re-runs.* The same input and config give the same bytes:

   - tar: the stdlib ``tarfile`` in POSIX pax format, each member's original
     ``TarInfo`` (name, mode, uid/gid, owner names, mtime, pax headers) copied
     from the input, members in input order, no timestamps of our own;
     ``.tar.gz`` / ``.tgz`` are gzip-ed with ``mtime=0`` and no file name.
     webdataset's ``TarWriter`` is not used because it stamps members with the
     current time and its own owner fields, and ``ShardWriter`` writes straight
     to the final name.
   - Parquet: pyarrow's ``ParquetWriter`` with the input's Arrow schema (its
     metadata too, so a Hugging Face ``Image`` feature stays an ``Image``) and
     compression codec; output row groups follow the input's, split only when a
     group's buffered rows exceed ``flush_bytes`` (bounded memory).

Image payloads change, nothing else: an image member ``KEY.jpg`` becomes
``KEY.png`` (:func:`png_member_name`), an image column's ``bytes`` become PNG and
its ``path`` (if any) gets the ``.png`` suffix.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import os
import tarfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..sources.keys import png_path

TEMP_TAG = ".tmp-"


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temporaries (hidden and tagged)."""
    return name.startswith(".") and TEMP_TAG in name


def temp_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}{TEMP_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; fsync and rename it into place on success.

    On any exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    try:
        yield tmp
        if not tmp.exists():  # the body wrote nothing: an empty file is still a result
            tmp.touch()
        fsync_path(tmp)
        os.replace(tmp, final)
        fsync_path(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=True) + "\n").encode())






# ------------------------------------------------------------------------ tar
class TarShardWriter:
    """Append members to a tar (optionally gzip) deterministically; see module docstring."""

    def __init__(self, path: str | os.PathLike, compress: bool = False):
        self.path = Path(path)
        self._raw = open(self.path, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0) if compress else None
        self._tar = tarfile.open(fileobj=self._gz or self._raw, mode="w", format=tarfile.PAX_FORMAT,
                                 encoding="utf-8")

    def add(self, info: tarfile.TarInfo, data: bytes | None) -> None:
        """Copy a member through unchanged (header fields and bytes)."""
        if data is None:
            self._tar.addfile(info)
        else:
            self._tar.addfile(info, io.BytesIO(data))

    def add_renamed(self, info: tarfile.TarInfo, name: str, data: bytes) -> None:
        """Write ``data`` under ``name`` with the rest of ``info``'s header (mode, owner, mtime)."""
        new = copy.copy(info)
        new.name = name
        new.size = len(data)
        # a stale pax "path"/"size" would override the new values when the header is written
        new.pax_headers = {k: v for k, v in info.pax_headers.items() if k not in ("path", "size")}
        self._tar.addfile(new, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
        if self._gz is not None:
            self._gz.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()


# -------------------------------------------------------------------- parquet
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
        self._group: Any = None

    def write(self, table: Any, group: Any = 0) -> None:
        import pyarrow as pa

        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if self._group is not None and group != self._group:
            self.flush()
        self._group = group
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
        fsync_path(self.path)

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
