"""Readers: every way the package reads images, and nothing that writes.

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""

from .errors import SourceError
from .hf import open_source

__all__ = ["SourceError", "open_source"]
