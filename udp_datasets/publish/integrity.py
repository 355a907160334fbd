"""Checks of a protected folder's integrity that ``verify`` runs beside matching the manifest.

* :func:`duplicate_members`: a tar sample holding two members of one name (``K.jpg`` and
  ``K.jpeg`` both written as ``K.png`` by an older version, or a hand-made shard). Readers keep
  one of them or fail ("Duplicate field"), so the folder is not what the manifest describes.
* :func:`unprotected_columns`: a Parquet or Arrow table with a second image column, copied
  through unprotected.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

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


def unprotected_columns(layout: Any) -> list[str]:
    """One problem per Parquet file (or Arrow folder) with image-like columns besides the protected
    one (:mod:`udp_datasets.sources.columns`): their images were never protected."""
    from ..sources.columns import image_like_columns

    problems: list[str] = []
    if layout.name == "arrow":
        import datasets

        schemas = [("data", datasets.load_from_disk(str(layout.root / "data")).features.arrow_schema)]
    elif layout.name == "parquet":
        import pyarrow.parquet as pq

        schemas = []
        for rel in layout.files:
            try:
                schemas.append((rel, pq.read_schema(layout.root / rel)))
            except Exception:  # noqa: BLE001 - unreadable files are reported when their images are read
                continue
    else:
        return problems
    for rel, schema in schemas:
        column = layout.image_column if layout.image_column in schema.names else None
        if column is None:
            from ..sources.parquet import find_image_column

            try:
                column = find_image_column(schema, None, layout.image_column)
            except Exception:  # noqa: BLE001
                column = None
        others = [c for c in image_like_columns(schema) if c != column]
        if others:
            problems.append(f"{rel}: image column(s) {others} besides {column!r}, the protected one: their images "
                            "were not protected (protect them, or drop them with --drop-columns)")
    return problems
