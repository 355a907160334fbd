"""Parquet shards and the image columns of Arrow data.

:func:`iter_parquet_batches` reads a Parquet file by record batches within each row
group (pyarrow), so a shard is never loaded whole. An image column is a struct of
``{"bytes", "path"}`` (the ``datasets.Image`` storage) or plain binary;
:func:`find_image_column` says which column it is and :func:`image_entries` gives the
bytes of each row.

A path inside data (``{"bytes": null, "path": ...}``) is opened in one place,
:func:`read_image_path`, and only under the ``root`` folder of a *local* source (an image
folder or a ``save_to_disk`` folder, whose ``datasets`` storage names its files by path).
Shards, remote and Hub data have no root: their images come from their bytes only, so a
hostile shard cannot make the tool read, protect and publish a file from the local disk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..images import PATH_ONLY_REASON, ImageError

from .hf import SourceError
from .remote import is_url, local_path


def open_parquet(url: str):
    import pyarrow.parquet as pq

    if not is_url(url) or url.startswith("file://"):
        return pq.ParquetFile(local_path(url))
    import fsspec

    return pq.ParquetFile(fsspec.open(url, "rb").open())


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


def read_image_path(path: str | os.PathLike, *, root: str | os.PathLike | None = None,
                    missing_ok: bool) -> bytes | None:
    """The bytes of an image that the data names by a path only (``bytes: null``).

    The one place where a path found *inside* data is opened, and only when ``root`` (the
    folder of a local source) is given and the path, symbolic links resolved, lies inside it
    (a relative path is taken relative to ``root``; ``..`` cannot leave it). Anything else is
    refused without touching the path, so the outcome says nothing of whether it exists.
    ``missing_ok``: a refused or unreadable path gives None instead of raising
    :class:`~udp_datasets.images.ImageError` (refused) or ``OSError`` (unreadable).
    """
    target = inside_root(path, root)
    if target is None:
        if missing_ok:
            return None
        raise ImageError(PATH_ONLY_REASON, str(path))
    try:
        return target.read_bytes()
    except OSError:
        if missing_ok:
            return None
        raise


def inside_root(path: str | os.PathLike, root: str | os.PathLike | None) -> Path | None:
    """``path`` resolved (relative paths from ``root``) when it lies inside ``root``, else None."""
    if root is None or not str(path):
        return None
    base = Path(root).expanduser().resolve()
    target = (base / Path(path).expanduser()).resolve()  # an absolute path replaces base
    return target if target == base or base in target.parents else None


def inline_path_entry(value: Any, root: str | os.PathLike | None) -> Any:
    """A data value with the file it names read in, where that is allowed: a path-only entry
    ``{"bytes": None, "path": P}`` or a plain path string becomes ``{"bytes": ..., "path": P}``
    when P is a readable file inside ``root``; otherwise it is returned as a path-only entry,
    which :func:`~udp_datasets.images.load_image` (``open_paths=False``) refuses. Other values
    (bytes, arrays, images, entries with bytes) are returned as they are."""
    if isinstance(value, (str, os.PathLike)):
        value = {"bytes": None, "path": os.fspath(value)}
    if isinstance(value, dict) and value.get("bytes") is None and value.get("path"):
        data = read_image_path(value["path"], root=root, missing_ok=True)
        if data is not None:
            return {**value, "bytes": data}
    return value


def data_image_value(value: Any, root: str | os.PathLike | None) -> Any:
    """A value of an image column of *data* (``ds.map(protector)``, a shard), made safe to decode:
    :func:`inline_path_entry` for entries and path strings, and an image that ``datasets``' decoder
    already opened from a local file (a PIL image with a ``filename``) kept only when that file is
    inside ``root``, else turned back into the path-only entry it came from (refused unread)."""
    filename = getattr(value, "filename", None) if not isinstance(value, (str, bytes, dict)) else None
    if isinstance(filename, str) and filename:
        return value if inside_root(filename, root) is not None else {"bytes": None, "path": filename}
    return inline_path_entry(value, root)


def iter_parquet_images(url: str, preferred_column: str | None = None, *, root: str | os.PathLike | None = None
                        ) -> Iterator[bytes | None]:
    """The image bytes of every row of a Parquet file, in order (None = no readable image; a
    path-only entry is read only under ``root``)."""
    pf = open_parquet(url)
    column = find_image_column(pf.schema_arrow, None, preferred_column)
    for _, batch in iter_parquet_batches(pf, 256, columns=[column]):
        for data, _ in image_entries(batch.column(0), root=root):
            yield data
