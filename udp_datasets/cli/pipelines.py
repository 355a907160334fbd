"""The entry point of the ready pipelines (``pipelines/*.py``): a YAML file in, a shard job run.

Why in cli/: a pipeline script is a small command line (``--config FILE --set KEY=VALUE``)
that parses arguments, sets up logging and turns the outcome into an exit status, all of
which only cli/ does; the work is the shard job's (:func:`udp_datasets.jobs.shard_job.run_shards`).
Runs under ``accelerate launch`` (any number of processes) or plain ``python``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from ..config import ConfigError, ProtectionConfig
from ..images import ImageError
from ..jobs.distributed import make_state
from ..jobs.shard_job import run_shards
from ..jobs.summary import format_summary
from ..sinks.atomic import OutputExistsError
from ..sources.errors import SourceError
from ..sources.hf import open_hf_source
from ..sources.paths import local_root
from ..sources.keys import IMAGE_EXTENSIONS
from ..sources.shards import discover_shards
from .exit_codes import EXIT_USAGE, exit_code
from .launch import column_names
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
    try:
        settings = load_pipeline_config(args.config, args.set)
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
        extensions = settings.get("image_extensions") or IMAGE_EXTENSIONS
        summary = run_shards(src, settings["destination"], config, image_column=settings.get("image_column"),
                             key_column=settings.get("key_column"), overwrite=bool(settings.get("overwrite")),
                             image_extensions=extensions, rows_per_shard=int(settings.get("rows_per_shard") or 10_000),
                             split=settings.get("split"), state=state,
                             image_root=local_root(settings["source"]) if kind == "hf_dataset" else None,
                             drop_columns=column_names(settings.get("drop_columns")))
    except (ConfigError, SourceError, OutputExistsError, ImageError) as exc:
        print(f"{kind} pipeline: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if state.is_main_process:
        print(format_summary(summary))
    return exit_code(summary, bool(settings.get("allow_errors")), report_quarantine=state.is_main_process)
