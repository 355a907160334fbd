"""The exit codes of ``udp-datasets`` and of the ready pipelines: one table, one mapping.

Why in one place: the datasets path, the shard job, the ``--num-processes`` launcher and
the pipeline scripts all end a protect job, and scripts around them test the status. An
outcome maps to a status in :func:`exit_code`, an error in :func:`error_exit_code`, which
every entry point reaches through :func:`run_reporting_errors`.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

EXIT_OK = 0
"""Done."""
EXIT_FAILED = 1
"""Unexpected failure, failed shards, or verification failed."""
EXIT_USAGE = 2
"""Usage or input error (bad flag, config, source, column, existing DST); message on stderr."""
EXIT_QUARANTINED = 3
"""Finished, but some images were quarantined (``--allow-errors`` makes this 0)."""


def exit_code(summary: Any, allow_errors: bool, *, report_quarantine: bool = True) -> int:
    """The exit status for a finished protect job (a :class:`~udp_datasets.records.summary.JobSummary`).

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


def error_exit_code(exc: BaseException) -> int | None:
    """The exit status for an error that ends a command, or None for one that is a bug (it is
    raised, with its traceback). Usage and input errors (bad flag, config, source, column,
    surrogate, image, an existing or busy DST, a source that cannot be read) are
    :data:`EXIT_USAGE`; a write that fails (a full disk, no permission) is :data:`EXIT_FAILED`."""
    from ..config import ConfigError
    from ..evaluate.metrics.features import FeatureExtractorUnavailable
    from ..images import ImageError
    from ..models import SurrogateError
    from ..sinks.atomic import OutputExistsError, OutputWriteError
    from ..sources.errors import ColumnError, SourceError
    from ..sources.shards import ShardReadError

    if isinstance(exc, (ConfigError, ColumnError, SourceError, SurrogateError, ImageError, OutputExistsError,
                        FeatureExtractorUnavailable, ShardReadError)):  # ShardReadError: a source fit cannot read
        return EXIT_USAGE
    if isinstance(exc, OutputWriteError):  # the output is left as it was
        return EXIT_FAILED
    return _publish_exit_code(exc)


def _publish_exit_code(exc: BaseException) -> int | None:
    """The Hub side: a refused or incomplete publish is :data:`EXIT_FAILED` (nothing wrong with the
    command, the data did not pass); any other publish or verify error is :data:`EXIT_USAGE`; a Hub HTTP
    error is usage when the repo is not found or not allowed (401/403/404), a failure otherwise."""
    from huggingface_hub.errors import HfHubHTTPError

    from ..publish.hub import PublishError, PublishIncomplete, PublishRefused
    from ..publish.verify import VerifyError

    if isinstance(exc, (PublishRefused, PublishIncomplete)):
        return EXIT_FAILED
    if isinstance(exc, (PublishError, VerifyError)):
        return EXIT_USAGE
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return EXIT_USAGE if status in (401, 403, 404) else EXIT_FAILED
    return None


def run_reporting_errors(command: str, work: Callable[[], int]) -> int:
    """``work()``'s exit status; an error :func:`error_exit_code` knows is said in one line on
    stderr (``COMMAND: error: ...``) and ends it with its status, any other is raised."""
    try:
        return work()
    except Exception as exc:
        code = error_exit_code(exc)
        if code is None:
            raise
        hub = type(exc).__module__.startswith("huggingface_hub")  # a Hub error's class says what (RepositoryNotFound)
        print(f"{command}: error: {type(exc).__name__ + ': ' if hub else ''}{exc}", file=sys.stderr)
        return code


def launcher_exit_code(status: int) -> int:
    """The status of ``--num-processes`` when ``accelerate launch`` itself ended non-zero: a usage
    error of the ranks stays :data:`EXIT_USAGE`, anything else (a crash, a signal) is :data:`EXIT_FAILED`."""
    return status if status == EXIT_USAGE else EXIT_FAILED
