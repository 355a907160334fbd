"""The ``udp-datasets`` command line: argument parsing, launching and ready pipelines.

Only this folder parses arguments or configures logging; everything below it is a library.
"""

from .app import EXIT_FAILED, EXIT_OK, EXIT_QUARANTINED, EXIT_USAGE, main

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_QUARANTINED", "EXIT_USAGE", "main"]
