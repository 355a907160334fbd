"""The exit codes of ``udp-datasets`` and of the ready pipelines: one table, one mapping."""

EXIT_OK = 0
"""Done."""
EXIT_FAILED = 1
"""Unexpected failure, failed shards, or verification failed."""
EXIT_USAGE = 2
"""Usage or input error (bad flag, config, source, column, existing DST); message on stderr."""
EXIT_QUARANTINED = 3
"""Finished, but some images were quarantined (``--allow-errors`` makes this 0)."""
