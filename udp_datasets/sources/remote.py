"""Where a shard lives: a local path, a ``file://`` URL, a ``pipe:CMD``, or a remote URL.

One opener, :func:`open_binary`, serves every format: a local path (or ``file://``) is opened
directly, ``pipe:CMD`` reads the standard output of a shell command (as webdataset does), and
every other URL (``http(s)://``, ``s3://``, ``gs://``, ``hf://`` ...) goes through ``fsspec``
(``http(s)`` needs ``aiohttp``, other stores their fsspec package). Tars are read as a stream;
Parquet asks for a seekable file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import PurePosixPath
from typing import Any
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


def open_binary(url: str, *, seekable: bool = False) -> Any:
    """Open a shard for reading. ``seekable``: random access (Parquet); else a stream is enough
    (tar), and an ``http(s)`` URL is streamed rather than read by range requests."""
    if not is_url(url) or url.startswith("file://"):
        return open(local_path(url), "rb")
    if url.startswith("pipe:"):
        if seekable:
            raise SourceError(f"{url}: a pipe is read as a stream, which Parquet cannot be; give a path or URL")
        return _Pipe(url[len("pipe:"):])
    try:
        import fsspec

        options = {"block_size": 0} if not seekable and url.startswith(("http://", "https://")) else {}
        return fsspec.open(url, "rb", **options).open()
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SourceError(f"{url}: this kind of URL needs a package fsspec asks for ({exc}); for http(s): "
                          "pip install 'udp-datasets[wds]'") from exc


class _Pipe:
    """The standard output of a shell command, read as a file; closing it checks the exit status
    (a command stopped early by a closed pipe, SIGPIPE, is not an error)."""

    _IGNORED = (0, 141, -13)  # done; killed by SIGPIPE (shell status, signal)

    def __init__(self, command: str):
        self.command = command
        self.proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)  # noqa: S602 - the user's pipe:
        self.stream = self.proc.stdout

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(size)  # type: ignore[union-attr]

    def close(self) -> None:
        self.stream.close()  # type: ignore[union-attr]
        status = self.proc.wait()
        if status not in self._IGNORED:
            raise OSError(f"pipe:{self.command} exited with status {status}")
