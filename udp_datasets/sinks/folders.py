"""Write a protected dataset as an Arrow (``save_to_disk``) folder.

(The PNG image folder output is the image-folder codec's: :mod:`udp_datasets.formats.imagefolder`.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_dataset(ds: Any, directory: Path) -> None:
    """``save_to_disk`` into ``directory`` (which the caller makes atomic)."""
    ds.save_to_disk(str(directory))
