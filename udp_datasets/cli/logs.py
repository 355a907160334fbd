"""Logging for the command line: one format for ``udp-datasets`` and the pipeline scripts.

Why its own module: only the command line decides where log records go (the library only
emits them), and the two entry points must agree on how they look.
"""

from __future__ import annotations

import logging

LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


def configure_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with ``verbose``) to stderr, in :data:`LOG_FORMAT`."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
