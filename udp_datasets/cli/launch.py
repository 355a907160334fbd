"""``udp-datasets protect`` on the shard job, and ``--num-processes`` through accelerate.

Why in cli/: deciding which job a command line wants, turning its flags into a
:class:`~udp_datasets.jobs.shard_spec.ShardJobSpec`, re-launching the very same command line
under ``accelerate launch`` and mapping the outcome to an exit status are matters of the command
line; the shard job itself (:func:`udp_datasets.jobs.shard_job.run_shard_job`) takes a spec and
knows nothing of flags, argv or exit codes.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError, ProtectionConfig
from ..jobs.distributed import make_state
from ..jobs.shard_job import run_shard_job
from ..jobs.shard_spec import ShardJobSpec
from ..records.names import JOB_RECORD
from ..records.summary import JobSummary, format_summary
from ..sinks.lock import destination_lock
from ..sources.errors import SourceError
from ..sources.paths import local_root
from ..sources.shards import looks_like_shards
from .exit_codes import EXIT_FAILED, exit_code, launcher_exit_code

logger = logging.getLogger(__name__)

CHILD_ENV = "UDP_DATASETS_LAUNCHED"  # set by --num-processes in the processes it starts


def wants_shard_job(args: Any) -> bool:
    """Whether ``udp-datasets protect`` should run the shard job for these arguments."""
    return (getattr(args, "format", None) == "parquet" or looks_like_shards(str(args.src))
            or launched_world_size() > 1 or bool(getattr(args, "num_processes", None) and args.num_processes > 1))


def launched_world_size() -> int:
    """The world size a launcher (accelerate, torchrun) gave this process; 1 when none did."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def drop_columns(args: Any) -> tuple[str, ...]:
    """``--drop-columns a,b`` as a tuple (other image columns to leave out of the output)."""
    return name_list(getattr(args, "drop_columns", None), "drop_columns")


def name_list(value: Any, setting: str) -> tuple[str, ...]:
    """Names given as a list, or as one comma-separated string (``--drop-columns``, ``--image-ext``, a
    pipeline's ``drop_columns``); ``setting`` names the setting in the error."""
    if not value:
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{setting}={value!r}: expected a list of names")
    return tuple(str(v).strip() for v in items if str(v).strip())


def protect_shards(args: Any, config: ProtectionConfig, sign_key: bytes | None = None) -> int:
    """``udp-datasets protect`` as a shard job (shards, --format parquet, --num-processes).

    No ``--image-column`` (None) lets the job find the image column; no ``--format`` (None)
    means Parquet shards for a ``datasets`` source and the input's own format for shards.
    """
    if getattr(args, "num_processes", None) and args.num_processes > 1 and launched_world_size() <= 1:
        return relaunch(args)
    src: Any = args.src
    state = make_state()
    root = None  # shards: images from their bytes only
    if not looks_like_shards(str(args.src)):
        if args.format not in (None, "parquet"):
            raise SourceError(f"--format {args.format} is not available for multi-process runs; "
                              "they write Parquet shards (--format parquet)")
        from ..sources import open_source

        with state.main_process_first():  # one process downloads / prepares the cache
            src = open_source(args.src, split=args.split)
        root = local_root(args.src)  # a local folder's path-only entries are read inside it only
    elif args.format == "imagefolder":
        raise SourceError("--format imagefolder does not apply to shard sources: the output keeps the "
                          "input's shard format")
    spec = ShardJobSpec.create(
        src, args.dst, config, image_column=args.image_column, key_column=args.key_column,
        image_extensions=name_list(getattr(args, "image_ext", None), "--image-ext") or None,
        drop_columns=drop_columns(args), rows_per_shard=getattr(args, "rows_per_shard", None), split=args.split,
        overwrite=args.overwrite, allow_errors=args.allow_errors, image_root=root, sign_key=sign_key)
    return report_shard_job(spec, state, launched=bool(os.environ.get(CHILD_ENV)))


def report_shard_job(spec: ShardJobSpec, state: Any, *, launched: bool = False) -> int:
    """Run ``spec`` on this process, print the summary on the main one and return its exit status
    (:func:`~udp_datasets.cli.exit_codes.exit_code`): the end of ``protect`` and of every pipeline.
    Ranks other than the main one, and the ranks ``--num-processes`` started (``launched``), exit 0
    on quarantine: a launcher reports any non-zero status of a rank as a crash."""
    summary = run_shard_job(spec, state)
    if state.is_main_process:
        print(format_summary(summary))
    return exit_code(summary, spec.allow_errors, report_quarantine=state.is_main_process and not launched)


def free_port() -> int:
    """A TCP port free on this machine now (for the launcher's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(argv: Sequence[str], num_processes: int, port: int | None = None) -> list[str]:
    """``accelerate launch`` for ``udp-datasets ARGV`` on ``num_processes`` local processes.

    ``--multi_gpu`` is what starts N processes (torchrun underneath) on a CPU-only
    machine too; ``--cpu --num_processes N`` would start only one.
    """
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(port or free_port())]
    if num_processes > 1:
        cmd.append("--multi_gpu")
    return cmd + ["-m", "udp_datasets.cli", *argv]


def strip_option(argv: Sequence[str], option: str) -> list[str]:
    """``argv`` without ``option`` and its value (``--opt V`` or ``--opt=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == option:
            skip = True
            continue
        if a.startswith(option + "="):
            continue
        out.append(a)
    return out


def relaunch(args: Any) -> int:
    """Run this same ``protect`` command under ``accelerate launch`` with N processes and
    map the outcome to the CLI's exit codes (the launched ranks exit 0 on quarantine,
    since torchrun reports any non-zero status as a crash). The command line is the one
    :func:`udp_datasets.cli.app.main` was given (``args.argv``), else this process's."""
    argv = strip_option(getattr(args, "argv", None) or sys.argv[1:], "--num-processes")
    with destination_lock(args.dst):  # a DST another live run holds: exit 2 here, before any process starts
        pass  # (the launched main rank takes the lock for the job itself)
    cmd = launch_command(argv, args.num_processes)
    env = {**os.environ, CHILD_ENV: "1"}
    logger.info("launching %d processes: %s", args.num_processes, " ".join(cmd))
    code = subprocess.call(cmd, env=env)
    if code != 0:
        return launcher_exit_code(code)
    record = Path(args.dst).expanduser() / JOB_RECORD
    try:
        summary = JobSummary.from_dict(json.loads(record.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return EXIT_FAILED
    return exit_code(summary, args.allow_errors)
