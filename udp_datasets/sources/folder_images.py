"""Files of a local image folder that ``load_dataset("imagefolder")`` leaves out but that are images.

``datasets`` reads an image folder by extension: an AVIF, HEIC or JPEG XL photo, or PNG bytes
named ``.dat``, is skipped without a word. A protect job must not pretend those were protected:
:func:`skipped_images` finds them (by extension and by content, the rules in
:mod:`udp_datasets.sources.keys`) so the job records each as quarantined, with its reason.
"""

from __future__ import annotations

import os
from pathlib import Path

from .keys import image_format, is_data_file, shard_kind, unreadable_format


def folder_extensions() -> frozenset[str]:
    """The extensions ``load_dataset("imagefolder")`` reads (``.png``, ...), lower case."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return frozenset(e.lower() for e in ImageFolder.EXTENSIONS)


def skipped_images(root: str | os.PathLike) -> list[tuple[str, str]]:
    """``(relative path, reason)`` of every file under ``root`` (hidden ones and links aside) that
    the image folder reader skips although its extension or its first bytes say image."""
    base = Path(root)
    read = folder_extensions()
    out: list[tuple[str, str]] = []
    for path in sorted(base.rglob("*")):
        rel = path.relative_to(base).as_posix()
        if path.is_symlink() or not path.is_file() or not is_data_file(rel) or path.suffix.lower() in read:
            continue
        if shard_kind(rel) is not None:
            continue  # a shard inside an image folder is refused as a whole (sources.shards)
        try:
            with open(path, "rb") as fh:
                head = fh.read(32)
        except OSError:
            continue
        foreign = unreadable_format(rel, head)
        if foreign is not None:
            out.append((rel, f"{foreign[0]} image data, a format this tool does not protect (reading it needs "
                             f"{foreign[1]}); it is left out: convert it to PNG or JPEG first"))
        elif image_format(head) is not None:
            out.append((rel, f"holds {image_format(head)} image bytes but its extension is not one an image folder "
                             "reads; it is left out: rename it"))
    return out
