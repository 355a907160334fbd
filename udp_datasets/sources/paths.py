"""The path rule: which local files a path found *inside data* may open.

A path inside data (``{"bytes": null, "path": ...}``, or a path string in an image column) is opened in
one place, :func:`read_image_path`, and only under the ``root`` folder of a *local* source (an image
folder or a ``save_to_disk`` folder, whose ``datasets`` storage names its files by path; :func:`local_root`
says which folder that is). Shards, remote and Hub data have no root: their images come from their bytes
only, so a hostile shard cannot make the tool read, protect and publish a file from the local disk.

Every reader (the shard and Parquet readers, the protector, verify) uses these functions, so none of them
imports a format module to apply the rule.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..images import PATH_ONLY_REASON, DecodedImage, ImageError, load_image


def local_root(src: Any) -> Path | None:
    """The folder of a local SRC (an image folder, a ``save_to_disk`` folder): the only place its
    path-only image entries may be read from. None for Hub ids, shards, URLs and ``Dataset`` objects,
    whose images come from their bytes only."""
    if not isinstance(src, (str, os.PathLike)):
        return None
    path = Path(src).expanduser()
    return path.resolve() if path.is_dir() else None


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


def load_data_image(value: Any, key: str, root: str | os.PathLike | None, *, from_data: bool,
                    max_pixels: int | None = None) -> DecodedImage:
    """Decode one image value under the path rule: a path inside data (an entry's, or a path string of a
    dataset column: ``from_data``) is read only inside ``root``; a path string that a caller hands over in a
    plain list is the caller's to open. A refused path-only entry's :class:`ImageError` says how to allow it."""
    if isinstance(value, dict) or (from_data and isinstance(value, (str, os.PathLike))):
        value, may_open = inline_path_entry(value, root), False
    else:
        may_open = isinstance(value, (str, os.PathLike))
    try:
        limit = {} if max_pixels is None else {"max_pixels": max_pixels}
        return load_image(value, key=key, open_paths=may_open, **limit)
    except ImageError as exc:
        if exc.reason != PATH_ONLY_REASON or root is not None:
            raise
        raise ImageError(exc.reason + " (your own image folder: pass Protector(image_root=FOLDER), or give it as "
                         "the source)", exc.key) from exc
