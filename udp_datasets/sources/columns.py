"""Which columns of a table hold images: every one is protected, or dropped by name.

A dataset may carry a second image column (``image`` and ``conditioning_image``, ``image`` and
``thumbnail``). A job protects one column; copying another through unchanged would publish
unprotected images as protected. So a job refuses a table whose other columns hold images,
naming them, unless they are dropped (``--drop-columns`` / ``drop_columns=``); to protect
several image columns, run one job per column.

Image-like columns: a Hugging Face ``Image`` feature (also inside a list or struct), any struct
with a binary ``bytes`` field (the ``Image`` storage, whatever the metadata says), and a plain
binary or string column whose values are image bytes (:func:`~udp_datasets.sources.keys.image_format`),
a ``data:image/...`` URI or base64 of image bytes, checked row by row as the data is read
(:func:`image_cells`, :func:`cell_format`).
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from .errors import ColumnError, SourceError
from .keys import image_format

DROP_ADVICE = "drop them with --drop-columns {names} (Python: drop_columns=[...] or ds.remove_columns)"


def _has_image_feature(feature: Any) -> bool:
    if isinstance(feature, dict):
        return feature.get("_type") == "Image" or any(_has_image_feature(v) for v in feature.values())
    if isinstance(feature, list):
        return any(_has_image_feature(v) for v in feature)
    return False


def _has_bytes_struct(typ: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_struct(typ):
        index = typ.get_field_index("bytes")
        if index >= 0 and (pa.types.is_binary(typ.field(index).type) or pa.types.is_large_binary(typ.field(index).type)):
            return True
        return any(_has_bytes_struct(typ.field(i).type) for i in range(typ.num_fields))
    if pa.types.is_list(typ) or pa.types.is_large_list(typ) or pa.types.is_fixed_size_list(typ):
        return _has_bytes_struct(typ.value_type)
    return False


def hf_features(schema: Any) -> dict[str, Any]:
    """The Hugging Face features JSON in an Arrow schema's metadata ({} when there is none)."""
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(meta)["info"]["features"] if meta else {}
    except (ValueError, KeyError, TypeError):
        return {}
    return features if isinstance(features, dict) else {}


def image_like_columns(schema: Any) -> list[str]:
    """Columns whose type or ``Image`` feature says they hold images, in schema order."""
    features = hf_features(schema)
    return [f.name for f in schema if _has_image_feature(features.get(f.name)) or _has_bytes_struct(f.type)]


def binary_columns(schema: Any) -> list[str]:
    """Binary, string, struct and list columns: what may hold image bytes (or base64 of them) cell by cell."""
    import pyarrow as pa

    return [f.name for f in schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)
            or pa.types.is_string(f.type) or pa.types.is_large_string(f.type) or pa.types.is_struct(f.type)
            or pa.types.is_list(f.type) or pa.types.is_large_list(f.type)]


def cell_format(value: Any, depth: int = 0) -> str | None:
    """The image format a cell holds: image bytes, a ``data:image/`` URI, a string that is base64 of
    image bytes (``iVBORw0KGgo...``), or any of them inside a struct or list; None otherwise."""
    import base64
    import binascii

    if isinstance(value, (dict, list, tuple)) and depth < 4:  # nested: a struct field, a list item
        items = value.values() if isinstance(value, dict) else value
        return next((f for f in (cell_format(v, depth + 1) for v in items) if f), None)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return image_format(bytes(value[:32]))
    if not isinstance(value, str) or len(value) < 16:
        return None
    if value[:11].lower() == "data:image/":
        return value[11:].split(";", 1)[0].split(",", 1)[0].upper() + " (data URI)"
    try:
        fmt = image_format(base64.b64decode(value[:44], validate=True))
    except (binascii.Error, ValueError):
        return None
    return f"{fmt} (base64)" if fmt else None


def check_columns(schema: Any, image_column: str, drop: Sequence[str], source: str) -> list[str]:
    """Refuse (``SourceError``) a table with image-like columns besides ``image_column`` that
    are not in ``drop``, or a ``drop`` naming an absent column or the image column; returns the
    plain binary columns that stay (their values are checked row by row, :func:`image_cells`)."""
    names = list(schema.names)
    unknown = [c for c in drop if c not in names]
    if unknown:
        raise SourceError(f"{source}: cannot drop {unknown}: no such column; the columns are {names}")
    if image_column in drop:
        raise SourceError(f"{source}: {image_column!r} is the image column to protect; it cannot be dropped")
    others = [c for c in image_like_columns(schema) if c != image_column and c not in drop]
    if others:
        raise SourceError(
            f"{source} has image column(s) {others} besides {image_column!r}, the one this job protects; they "
            "would be copied unprotected. Choose the column to protect with --image-column and "
            + DROP_ADVICE.format(names=",".join(others)) + ", or protect each in a job of its own")
    return [c for c in binary_columns(schema) if c != image_column and c not in drop]


def image_cells(table: Any, columns: Iterable[str]) -> dict[int, str]:
    """``{row: reason}`` for rows whose value in one of ``columns`` holds an image (:func:`cell_format`)."""
    out: dict[int, str] = {}
    for column in columns:
        if column not in table.schema.names:
            continue
        for row, value in enumerate(table.column(column).to_pylist()):
            fmt = cell_format(value) if row not in out else None
            if fmt is not None:
                out[row] = (f"column {column!r} holds a {fmt} image that would be copied unprotected; "
                            + DROP_ADVICE.format(names=column))
    return out


def drop_from_schema(schema: Any, drop: Sequence[str]) -> Any:
    """``schema`` without the ``drop`` columns, its Hugging Face features metadata to match."""
    if not drop:
        return schema
    kept = schema.remove_metadata()
    for name in drop:
        kept = kept.remove(kept.get_field_index(name))
    meta = dict(schema.metadata or {})
    if b"huggingface" in meta:
        try:
            info = json.loads(meta[b"huggingface"])
            features = info.get("info", {}).get("features")
            if isinstance(features, dict):
                for name in drop:
                    features.pop(name, None)
            meta[b"huggingface"] = json.dumps(info).encode()
        except (ValueError, AttributeError):
            meta.pop(b"huggingface")
    return kept.with_metadata(meta) if meta else kept


def check_dataset(ds: Any, image_column: str, drop: Sequence[str] = (), source: str = "the dataset") -> Any:
    """A ``datasets`` dataset with ``drop`` removed, refused (``SourceError``) when another column
    holds images (:func:`check_columns`; its plain binary columns are read through, a ``Dataset``
    only: a stream is checked batch by batch in :func:`stored_image_column`)."""
    import datasets

    features = getattr(ds, "features", None)
    if features is None:
        return ds
    side = check_columns(features.arrow_schema, image_column, drop, source)
    if drop:
        ds = ds.remove_columns(list(drop))
    if side and isinstance(ds, datasets.Dataset):
        offset = 0
        for table in ds.with_format("arrow").select_columns(side).iter(batch_size=1024):
            found = image_cells(table, side)
            if found:
                row = min(found)
                raise SourceError(f"{source} row {offset + row}: {found[row]}")
            offset += table.num_rows
    return ds


def stored_image_column(batch: Any, column: str) -> list[Any]:
    """:func:`~udp_datasets.sources.hf.stored_column`, after refusing a batch whose other columns
    hold images (``ds.map(protector)`` on a table with a second image column: it would be copied
    unprotected). Checks the batch's ``Image`` features, then the values: decoded images, image
    bytes, ``{"bytes": ...}`` entries of image bytes."""
    from .hf import stored_column

    features = getattr(getattr(batch, "formatter", None), "features", None) or {}
    others = [name for name in batch.keys() if name != column and _has_image_feature(_feature_json(features.get(name)))]
    for name in batch.keys():
        if name == column or name in others:
            continue
        for value in stored_column(batch, name):
            if hasattr(value, "getpixel") or cell_format(value):
                others.append(name)
                break
    if others:
        raise SourceError(f"the batch has image column(s) {others} besides {column!r}, the one protected; they "
                          "would be copied unprotected: remove them first (ds.remove_columns) or protect "
                          "each with a Protector of its own (image_column=...)")
    return stored_column(batch, column)


def _feature_json(feature: Any) -> Any:
    if feature is None:
        return None
    import datasets

    try:
        return datasets.Features({"x": feature}).to_dict()["x"]
    except (TypeError, ValueError, AttributeError):
        return None


def raw_image_column(ds: Any, column: str) -> Any:
    """``ds`` with ``column`` as undecoded ``{"bytes", "path"}`` (when it is an Image column)."""
    import datasets

    feature = (getattr(ds, "features", None) or {}).get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def sample_rows(data: Any, column: str, caption_column: str | None, limit: int, seed: int
                ) -> tuple[list[Any], list[Any] | None]:
    """At most ``limit`` rows of ``data`` (a ``datasets`` dataset, or any iterable of images), drawn with ``seed``
    and kept in order: their ``column`` values as stored (undecoded), and their captions (None without
    ``caption_column``, which needs a dataset). A missing column raises :class:`ColumnError`."""
    if hasattr(data, "column_names") and hasattr(data, "select"):
        for name in (column, caption_column):
            if name is not None and name not in data.column_names:
                raise ColumnError(f"column {name!r} not found; columns are {data.column_names}")
        data = raw_image_column(data, column)
        subset = data.select(_subset_indices(len(data), limit, seed))
        return subset[column], (subset[caption_column] if caption_column is not None else None)
    if caption_column is not None:
        raise ColumnError(f"caption_column={caption_column!r} needs a datasets.Dataset with that column; "
                          "a plain list of images has no captions (use prompt= instead)")
    values = list(data)
    return [values[i] for i in _subset_indices(len(values), limit, seed)], None


def _subset_indices(n: int, limit: int, seed: int) -> list[int]:
    if n <= limit:
        return list(range(n))
    import numpy as np

    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=limit, replace=False).tolist())
