"""Deterministic WebDataset tar output: the same input and config give the same bytes.

Why its own writer: a resumed shard job must write exactly what an uninterrupted one
writes, and the published shards must keep every non-image member as it was. So this uses
the stdlib ``tarfile`` in POSIX pax format, copies each member's original ``TarInfo`` (name,
mode, uid/gid, owner names, mtime, pax headers) from the input, keeps input order and adds
no timestamps of its own; ``.tar.gz`` / ``.tgz`` are gzip-ed with ``mtime=0`` and no file
name. webdataset's ``TarWriter`` stamps members with the current time and its own owner
fields, and its ``ShardWriter`` writes straight to the final name, so neither is used.

The writer writes to whatever path it is given; the shard job gives it a temporary from
:func:`udp_datasets.sinks.atomic.atomic_file`, which fsyncs and renames it into place.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import os
import tarfile
from pathlib import Path


class TarShardWriter:
    """Append members to a tar (optionally gzip) deterministically; see the module docstring."""

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
        self._raw.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._raw.close()
