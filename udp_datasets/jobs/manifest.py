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
from typing import Iterable, Sequence

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


def manifest_table(protected: Sequence, source: str | Sequence[str], config_hash: str) -> pa.Table:
    """Build manifest rows from :class:`~udp_datasets.protector.ProtectedImage` records."""
    sources = [source] * len(protected) if isinstance(source, str) else list(source)
    return pa.table({
        "key": [p.key for p in protected],
        "source": sources,
        "source_sha256": [p.source_sha256 for p in protected],
        "sha256": [p.sha256 for p in protected],
        "width": [p.width for p in protected],
        "height": [p.height for p in protected],
        "linf": [p.linf for p in protected],
        "psnr": [p.psnr if math.isfinite(p.psnr) else None for p in protected],
        "config_hash": [config_hash] * len(protected),
    }, schema=MANIFEST_SCHEMA)


def write_manifest(tables: Iterable[pa.Table], path: str | os.PathLike) -> Path:
    """Concatenate manifest tables and write them as one Parquet file (temp + rename)."""
    path = Path(path)
    tables = list(tables)
    table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
    with atomic_file(path) as tmp:
        pq.write_table(table.cast(MANIFEST_SCHEMA), tmp)
    return path


def read_manifest(path: str | os.PathLike) -> pa.Table:
    return pq.read_table(path).cast(MANIFEST_SCHEMA)
