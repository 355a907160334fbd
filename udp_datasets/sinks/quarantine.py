"""The quarantine file: one JSON line (key, index, reason) per image that was left out of the output."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from ..images import FailedImage

logger = logging.getLogger(__name__)


def append_quarantine(path: str | os.PathLike, failed: Sequence[FailedImage]) -> None:
    """Append ``failed`` to the JSONL file at ``path`` in one ``O_APPEND`` write (safe with several worker
    processes writing the same file) and log each one."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"key": f.key, "index": f.index, "reason": f.reason}) + "\n" for f in failed)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, lines.encode())
    finally:
        os.close(fd)
    for f in failed:
        logger.warning("quarantined sample %s: %s", f.key, f.reason)
