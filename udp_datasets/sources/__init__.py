"""Readers: every way the package reads images, and nothing that writes.

- ``keys``: the one list of image extensions, shard suffixes, WebDataset key rules and data-file names;
- ``hf``: a user's SRC (image folder, ``save_to_disk`` folder, Hub id) as a ``datasets`` split;
- ``shards``: which tar / Parquet shards SRC names; ``tar`` and ``parquet`` read them, ``remote`` opens URLs;
- ``layouts``: the images of a dataset folder in any layout a job writes (what ``verify`` re-reads);
- ``bundled``: the real pictures that ship with the package (demo, tests, evaluation).
"""

from .errors import SourceError
from .hf import open_source

__all__ = ["SourceError", "open_source"]
