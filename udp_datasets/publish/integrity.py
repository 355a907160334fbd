"""Checks of a protected folder's integrity that ``verify`` runs beside matching the manifest.

* :func:`duplicate_members`: a tar sample holding two members of one name (``K.jpg`` and
  ``K.jpeg`` both written as ``K.png`` by an older version, or a hand-made shard). Readers keep
  one of them or fail ("Duplicate field"), so the folder is not what the manifest describes.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from ..sources.keys import split_key


def duplicate_members(root: Path, files: list[str]) -> list[str]:
    """One problem per tar sample (consecutive members of one WebDataset key) that holds two
    members of the same name; the headers are read as a stream, member data is skipped."""
    problems: list[str] = []
    for rel in files:
        try:
            with tarfile.open(root / rel, mode="r|*") as tar:
                key, names = None, set()
                for info in tar:
                    tar.members = []
                    member_key = split_key(info.name)[0]
                    if member_key != key:
                        key, names = member_key, set()
                    if info.name in names and key is not None:
                        problems.append(f"{rel}: sample {key!r} holds two members named {info.name!r} "
                                        "(readers keep one or fail)")
                    names.add(info.name)
        except (tarfile.TarError, OSError):
            continue  # an unreadable shard is reported when its images are read
    return problems
