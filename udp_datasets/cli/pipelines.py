"""The entry point of the ready pipelines (``pipelines/*.py``): a YAML file in, a shard job run.

Why in cli/: a pipeline script is a small command line (``--config FILE --set KEY=VALUE``)
that parses arguments, sets up logging and turns the outcome into an exit status, all of
which only cli/ does; the settings become a :class:`~udp_datasets.jobs.shard_spec.ShardJobSpec`, as
``udp-datasets protect``'s flags do, and the work is the shard job's
(:func:`udp_datasets.jobs.shard_job.run_shard_job`); errors and outcomes map to exit codes in
:mod:`udp_datasets.cli.exit_codes`, as for every command.
Runs under ``accelerate launch`` (any number of processes) or plain ``python``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError, ProtectionConfig
from ..jobs.distributed import make_state
from ..jobs.shard_spec import ShardJobSpec
from ..sources.errors import SourceError
from ..sources.hf import open_hf_source
from ..sources.paths import local_root
from ..sources.shards import discover_shards
from .exit_codes import run_reporting_errors
from .launch import name_list, report_shard_job
from .logs import configure_logging

PIPELINE_KINDS = ("hf_dataset", "webdataset", "parquet")
PIPELINE_KEYS = frozenset({"source", "destination", "split", "streaming", "rows_per_shard", "image_column",
                           "key_column", "image_extensions", "overwrite", "allow_errors", "protection",
                           "drop_columns"})


def load_pipeline_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """A pipeline YAML (see ``pipelines/*.yaml``) with ``KEY=VALUE`` overrides applied.

    ``protection.steps=10`` sets a field of the ``protection:`` mapping (any
    :class:`ProtectionConfig` field); values are parsed as YAML (``null``, numbers...).
    """
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of pipeline settings")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. protection.steps=10)")
        target = data
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)
    unknown = sorted(set(data) - PIPELINE_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {unknown}; known: {sorted(PIPELINE_KEYS)}")
    for required in ("source", "destination"):
        if not data.get(required):
            raise ConfigError(f"{path}: '{required}' is required")
    return data


def build_parser(kind: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"pipelines/{kind}.py", description=f"udp-datasets {kind} pipeline")
    parser.add_argument("--config", required=True, help=f"pipeline YAML (see pipelines/{kind}.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting, e.g. --set destination=out --set protection.steps=10")
    return parser


def run_pipeline(kind: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of ``pipelines/<kind>.py``: ``--config FILE [--set KEY=VALUE ...]``.

    Exit status: 0 done, 3 samples quarantined (unless ``allow_errors``), 1 failed
    shards, 2 bad configuration or source.
    """
    if kind not in PIPELINE_KINDS:
        raise ValueError(f"unknown pipeline {kind!r}; one of {PIPELINE_KINDS}")
    args = build_parser(kind).parse_args(argv)
    configure_logging()
    return run_reporting_errors(f"{kind} pipeline", lambda: _run(kind, args.config, args.set))


def _run(kind: str, path: str, overrides: Sequence[str]) -> int:
    """One pipeline run: its settings as a shard job spec, run and reported."""
    settings = load_pipeline_config(path, overrides)
    config = ProtectionConfig.from_dict(settings.get("protection") or {})
    state = make_state()
    src: Any = settings["source"]
    if kind == "hf_dataset":
        with state.main_process_first():
            src = open_hf_source(str(src), split=settings.get("split"),
                                 streaming=bool(settings.get("streaming", False)))
    else:
        want = "tar" if kind == "webdataset" else "parquet"
        wrong = [s.name for s in discover_shards(src) if s.kind != want]
        if wrong:
            raise SourceError(f"the {kind} pipeline takes {want} shards; got {wrong[:3]}")
    spec = ShardJobSpec.create(
        src, settings["destination"], config, image_column=settings.get("image_column"),
        key_column=settings.get("key_column"),
        image_extensions=name_list(settings.get("image_extensions"), "image_extensions") or None,
        drop_columns=name_list(settings.get("drop_columns"), "drop_columns"),
        rows_per_shard=settings.get("rows_per_shard"), split=settings.get("split"),
        overwrite=bool(settings.get("overwrite")), allow_errors=bool(settings.get("allow_errors")),
        image_root=local_root(settings["source"]) if kind == "hf_dataset" else None)
    return report_shard_job(spec, state)
