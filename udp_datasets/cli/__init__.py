"""The ``udp-datasets`` command line: the only place that parses arguments or configures logging.

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""

from .app import EXIT_FAILED, EXIT_OK, EXIT_QUARANTINED, EXIT_USAGE, main

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_QUARANTINED", "EXIT_USAGE", "main"]
