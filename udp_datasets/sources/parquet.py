"""Parquet shards and the image columns of Arrow data.

:func:`iter_parquet_batches` reads a Parquet file by record batches within each row
group (pyarrow), so a shard is never loaded whole. An image column is a struct of
``{"bytes", "path"}`` (the ``datasets.Image`` storage) or plain binary;
:func:`find_image_column` says which column it is and :func:`image_entries` gives the
bytes of each row.

A path inside data (``{"bytes": null, "path": ...}``) is opened only as the path rule
(:mod:`udp_datasets.sources.paths`) allows: under the ``root`` folder of a local source.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Sequence


from .errors import SourceError
from .paths import read_image_path
from .remote import is_url, local_path, open_binary


def open_parquet(url: str):
    """A ``pyarrow.parquet.ParquetFile`` for a local path, or a URL opened seekable
    (:func:`udp_datasets.sources.remote.open_binary`)."""
    import pyarrow.parquet as pq

    if not is_url(url) or url.startswith("file://"):
        return pq.ParquetFile(local_path(url))
    return pq.ParquetFile(open_binary(url, seekable=True))


def iter_parquet_batches(pf: Any, batch_size: int, columns: Sequence[str] | None = None
                         ) -> Iterator[tuple[int, Any]]:
    """``(row_group_index, RecordBatch)`` pairs, in file order, ``batch_size`` rows at most
    (only ``columns`` when given)."""
    for group in range(pf.num_row_groups):
        for batch in pf.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns,
                                     use_threads=False):
            if batch.num_rows:
                yield group, batch


def find_image_column(schema: Any, requested: str | None, preferred: str | None = None) -> str:
    """The image column of an Arrow schema: the requested one (an error if absent), else
    ``preferred`` if present, else the only ``Image`` feature in its Hugging Face metadata,
    else a column called ``image``, else the only binary column."""
    names = list(schema.names)
    if requested is not None:
        if requested not in names:
            raise SourceError(f"no image column {requested!r}; the columns are {names} (use --image-column)")
        return requested
    if preferred is not None and preferred in names:
        return preferred
    meta = (schema.metadata or {}).get(b"huggingface")
    if meta:
        try:
            features = json.loads(meta)["info"]["features"]
            images = [k for k, v in features.items() if isinstance(v, dict) and v.get("_type") == "Image"]
            if len(images) == 1:
                return images[0]
        except (ValueError, KeyError, TypeError):
            pass
    if "image" in names:
        return "image"
    import pyarrow as pa

    binary = [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if len(binary) == 1:
        return binary[0]
    raise SourceError(f"cannot tell which column holds the images among {names}; pass --image-column")


def image_entries(column: Any, *, root: str | os.PathLike | None = None, missing_ok: bool = True
                  ) -> list[tuple[bytes | None, str | None]]:
    """``(bytes, path)`` per row of an Arrow image column (``{"bytes", "path"}`` structs, or
    plain binary with no path). A struct with no bytes but a path is read from that path
    only when it lies under ``root`` (:func:`read_image_path`); bytes None = no image."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_struct(column.type):
        return [(value, None) for value in column.to_pylist()]
    values = column.field("bytes").to_pylist()
    paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 else [None] * len(values)
    return [(value if value is not None else
             (read_image_path(path, root=root, missing_ok=missing_ok) if path else None), path)
            for value, path in zip(values, paths)]


def iter_parquet_images(url: str, preferred_column: str | None = None, *, root: str | os.PathLike | None = None
                        ) -> Iterator[bytes | None]:
    """The image bytes of every row of a Parquet file, in order (None = no readable image; a
    path-only entry is read only under ``root``)."""
    pf = open_parquet(url)
    column = find_image_column(pf.schema_arrow, None, preferred_column)
    for _, batch in iter_parquet_batches(pf, 256, columns=[column]):
        for data, _ in image_entries(batch.column(0), root=root):
            yield data
