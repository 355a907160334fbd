"""The exit codes of ``udp-datasets`` and of the ready pipelines: one table, one mapping.

Why in one place: the datasets path, the shard runner, the ``--num-processes`` launcher and
the pipeline scripts all end a protect job, and scripts around them test the status.
"""

from __future__ import annotations

from typing import Any

EXIT_OK = 0
"""Done."""
EXIT_FAILED = 1
"""Unexpected failure, failed shards, or verification failed."""
EXIT_USAGE = 2
"""Usage or input error (bad flag, config, source, column, existing DST); message on stderr."""
EXIT_QUARANTINED = 3
"""Finished, but some images were quarantined (``--allow-errors`` makes this 0)."""


def exit_code(summary: Any, allow_errors: bool, *, report_quarantine: bool = True) -> int:
    """The exit status for a finished protect job (a :class:`~udp_datasets.jobs.summary.JobSummary`).

    Failed shards are a failure; quarantined samples are :data:`EXIT_QUARANTINED` unless
    ``allow_errors``. ``report_quarantine=False`` is for the processes that must exit 0 on
    quarantine all the same: ranks other than the main one, and the ranks ``--num-processes``
    starts (a launcher reports any non-zero status of a rank as a crash; the process that
    launched them reads the job record and reports instead).
    """
    if summary.shards_failed:
        return EXIT_FAILED
    if summary.errors and not allow_errors and report_quarantine:
        return EXIT_QUARANTINED
    return EXIT_OK
