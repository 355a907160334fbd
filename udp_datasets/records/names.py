"""The names of the files a protect job writes: one module, read by the jobs that write them
and by ``verify``, ``publish`` and the command line that read them.

The dataset job writes its record and manifest beside the data (:data:`RECORD_FILE`,
:data:`MANIFEST_FILE`, :data:`ERRORS_FILE`); the shard job keeps its own files in the hidden
:data:`BOOKKEEPING` folder (hidden, so ``datasets`` and shell globs see only data), with one
completion marker, manifest and errors file per shard. The two top-level names are defined in
:mod:`udp_datasets.sources.keys`, because readers below this floor (``sources``) must tell data
from records by them; they are re-exported here so that writers and ``publish`` need one module.
"""

from __future__ import annotations

from ..sources.keys import MANIFEST_FILE, RECORD_FILE

__all__ = ["BOOKKEEPING", "ERRORS_FILE", "JOB_RECORD", "MANIFEST_FILE", "MANIFEST_FILES", "MARKER_SUFFIX",
           "RANKS_FOLDER", "RECORD_FILE", "RECORD_FILES", "SHARDS_FOLDER", "SHARD_ERRORS_SUFFIX",
           "SHARD_MANIFEST_SUFFIX", "SURROGATE_FOLDER"]

ERRORS_FILE = "errors.jsonl"
"""Every quarantined sample, one JSON line each (key, reason; the shard or index)."""
BOOKKEEPING = ".udp"
"""The shard job's own folder under DST (its record, manifest, errors, markers, fitted surrogate)."""
JOB_RECORD = f"{BOOKKEEPING}/job.json"
"""The shard job's record, relative to DST (published as :data:`RECORD_FILE`)."""
SHARDS_FOLDER = f"{BOOKKEEPING}/shards"
"""Per-shard markers, manifests and errors, relative to DST."""
RANKS_FOLDER = f"{BOOKKEEPING}/ranks"
"""What each rank did in the last run, relative to DST."""
SURROGATE_FOLDER = f"{BOOKKEEPING}/surrogate"
"""The surrogate fitted for a shard job that was given none, relative to DST."""
MARKER_SUFFIX = ".done.json"
"""A shard's completion marker: ``SHARDS_FOLDER/NAME.done.json``."""
SHARD_MANIFEST_SUFFIX = ".manifest.parquet"
"""A shard's manifest, merged into ``.udp/manifest.parquet`` when the job ends."""
SHARD_ERRORS_SUFFIX = ".errors.jsonl"
"""A shard's quarantined samples, merged into ``.udp/errors.jsonl`` when the job ends."""

RECORD_FILES = (RECORD_FILE, JOB_RECORD)
"""Where a protected folder's job record may be, first found wins: the dataset job's, the shard job's."""
MANIFEST_FILES = (MANIFEST_FILE, f"{BOOKKEEPING}/{MANIFEST_FILE}")
"""Where a protected folder's merged manifest may be: the dataset job's, the shard job's."""
