"""Readers: turn a user's SRC argument into a datasets ``Dataset``.

SRC may be an image folder (imagefolder layout, labels from sub-folders), a
``save_to_disk`` directory, or a Hugging Face Hub dataset id.
"""

from .hf import SourceError, open_source

__all__ = ["SourceError", "open_source"]
