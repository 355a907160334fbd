"""Where a shard lives: a local path, a ``file://`` URL, or a remote URL opened as a stream.

Remote URLs (``http(s)://``, ``pipe:...``, ``s3://`` ...) are opened the way webdataset
opens them (``webdataset.gopen``) for tars, and with ``fsspec`` for Parquet
(:func:`udp_datasets.sources.parquet.open_parquet`).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from urllib.parse import urlparse

from .errors import SourceError


def is_url(src: str) -> bool:
    return src.startswith("pipe:") or bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", src))


def local_path(url: str) -> str:
    """The file path of a local shard: ``file:///x/a.tar`` -> ``/x/a.tar``; a plain path as is."""
    return urlparse(url).path if url.startswith("file://") else url


def url_basename(url: str) -> str:
    """The file name a URL ends in (for ``pipe:`` commands, the last argument's)."""
    if url.startswith("pipe:"):
        tokens = [t for t in url[5:].split() if not t.startswith("-")]
        return PurePosixPath(urlparse(tokens[-1]).path if tokens else "").name
    return PurePosixPath(urlparse(url).path).name


def open_binary(url: str):
    """Open a shard for reading: a local path directly, anything else with ``webdataset.gopen``."""
    if not is_url(url) or url.startswith("file://"):
        return open(local_path(url), "rb")
    try:
        from webdataset.gopen import gopen
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SourceError(f"{url}: URLs are opened with webdataset: pip install 'udp-datasets[wds]'") from exc
    return gopen(url, "rb")
