"""Per-sample provenance: the manifest every protection run writes.

One row per protected image: which sample, from which shard or file, the SHA-256
of the source bytes and of the protected PNG, its size, the L-inf distance in
grey levels, the PSNR and the config hash. Verifiers re-hash published images
against it; the dataset card summarises it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..sinks.atomic import atomic_file

MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", pa.string()),  # shard or file the sample came from
    ("source_sha256", pa.string()),  # of the original encoded bytes (null if only pixels were given)
    ("sha256", pa.string()),  # of the protected PNG bytes
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("linf", pa.int32()),  # max |protected - source| in 8-bit levels
    ("psnr", pa.float64()),  # dB; null when infinite
    ("config_hash", pa.string()),
])
_PER_IMAGE = ("key", "source_sha256", "sha256", "width", "height", "linf", "psnr")  # from each protected image


def manifest_table(protected: Any, source: str | Sequence[str | None], config_hash: str) -> pa.Table:
    """Manifest rows for protected images, from either side of the protector.

    ``protected`` is a sequence of :class:`~udp_datasets.protector.ProtectedImage` (the shard
    job) or a table of the protector's provenance columns ``udp_key``, ``udp_sha256``... (a
    ``datasets.Dataset`` or a mapping of lists: the dataset job). ``source`` names the shard
    or file of every row, or of each row. An infinite PSNR (an unchanged image) is null.
    """
    if hasattr(protected, "column_names") or isinstance(protected, Mapping):
        columns = {name: list(protected[f"udp_{name}"]) for name in _PER_IMAGE}
    else:
        columns = {name: [getattr(p, name) for p in protected] for name in _PER_IMAGE}
    n = len(columns["key"])
    sources = [source] * n if isinstance(source, str) else [None if s is None else str(s) for s in source]
    columns["psnr"] = [p if p is not None and math.isfinite(p) else None for p in columns["psnr"]]
    return pa.table({**columns, "source": sources, "config_hash": [config_hash] * n},
                    schema=MANIFEST_SCHEMA)


def write_manifest(tables: Iterable[pa.Table], path: str | os.PathLike) -> Path:
    """Concatenate manifest tables and write them as one Parquet file (temp + rename)."""
    path = Path(path)
    tables = list(tables)
    table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
    with atomic_file(path) as tmp:
        pq.write_table(table.cast(MANIFEST_SCHEMA), tmp)
    return path


def manifest_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a manifest file's bytes, hex: what the job record keeps (``manifest_sha256``)
    and ``verify`` recomputes. The file's bytes, not its rows: any edit shows, and publishing
    copies the file unchanged. It catches accidental and casual edits only; whoever rewrites
    the manifest and the record together can forge it (``--sign-key`` adds a keyed signature)."""
    return file_sha256(path)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex, read in 1 MiB blocks (a manifest, an output shard)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: str | os.PathLike) -> pa.Table:
    return pq.read_table(path).cast(MANIFEST_SCHEMA)
