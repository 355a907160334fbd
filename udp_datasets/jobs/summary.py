"""What a protect job did: one record type for the dataset job and the shard job.

Why one type: ``udp_protection.json`` (written by :mod:`udp_datasets.jobs.dataset_job`) and
``.udp/job.json`` (written by :mod:`udp_datasets.jobs.shard_job`) answer the same questions
(what was read and written, with which config and surrogate, how many samples were protected
or quarantined, the budget actually used) and are read by the same readers (``verify``,
``publish`` and its dataset card, the command line's summary and exit status). A field only
one job knows stays at its default in the other's record; :attr:`JobSummary.sharded` says
which job wrote it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

RECORD_FORMAT = "udp-protection"
RECORD_FORMAT_VERSION = 1


@dataclass
class JobSummary:
    """What a protect run did; saved as ``udp_protection.json`` or ``.udp/job.json`` beside the output."""

    source: str
    destination: str
    count: int  # protected samples (rows; tar samples with images)
    errors: int  # quarantined samples
    seconds: float  # this run, wall clock
    images_per_second: float  # this run
    max_linf_levels: int
    budget_levels: int
    mean_psnr_db: float | None
    config: dict[str, Any]
    config_hash: str  # dataset job: ProtectionConfig.hash(); shard job: the job hash its markers carry
    surrogate: dict[str, Any] | None
    fit: dict[str, Any] | None = None
    errors_file: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str | None = None  # ISO 8601, UTC
    finished_at: str | None = None
    # the dataset job (a ``datasets`` source, ``ds.map``)
    source_info: dict[str, Any] | None = None  # id, type, revision, license (sources.hf.describe_source)
    output_format: str | None = None
    image_column: str | None = None
    split: str | None = None
    error_records: list[dict[str, Any]] = field(default_factory=list)  # key (relative), index, reason
    # the shard job
    images: int | None = None  # protected images (a tar sample may hold several)
    shards: int | None = None  # None: not a shard job
    shards_done: int | None = None  # by this run
    shards_skipped: int | None = None  # already complete with the same job hash
    shards_failed: list[dict[str, str]] = field(default_factory=list)
    passthrough: int | None = None  # tar samples with no image, copied unchanged
    protection_config_hash: str | None = None  # ProtectionConfig.hash() of the resolved config
    world_size: int | None = None
    ranks: list[dict[str, Any]] = field(default_factory=list)
    manifest: str | None = None
    manifest_sha256: str | None = None  # of the manifest file's bytes, when the job ended (jobs.manifest)
    record_file: str | None = None  # where this record is saved
    format: str = RECORD_FORMAT
    format_version: int = RECORD_FORMAT_VERSION

    @property
    def sharded(self) -> bool:
        """Whether the shard job wrote this record."""
        return self.shards is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSummary:
        """A saved record; keys this version does not know (a newer writer's) are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


ShardJobSummary = JobSummary
"""The shard job's summary before both jobs shared one type; an alias until udp-datasets 0.3."""


def format_summary(summary: JobSummary) -> str:
    """The lines ``udp-datasets protect`` prints when a job is done."""
    psnr = "n/a" if summary.mean_psnr_db is None else f"{summary.mean_psnr_db:.2f} dB"
    if summary.sharded:
        lines = [
            f"protected   {summary.count} samples ({summary.images} images) in {summary.shards} shards -> "
            f"{summary.destination}",
            f"shards      {summary.shards_done} done now, {summary.shards_skipped} already complete"
            + (f", {len(summary.shards_failed)} FAILED (re-run to retry)" if summary.shards_failed else "")
            + (f", {summary.world_size} processes" if (summary.world_size or 1) > 1 else ""),
        ]
    else:
        lines = [f"protected   {summary.count} images -> {summary.destination}"]
    lines += [
        f"quarantined {summary.errors}" + (f" (see {summary.errors_file})" if summary.errors else ""),
        f"time        {summary.seconds:.1f} s ({summary.images_per_second:.2f} images/s)",
        f"L-inf       max {summary.max_linf_levels} levels (budget {summary.budget_levels})",
        f"PSNR        mean {psnr}",
    ]
    if summary.sharded:
        lines.append(f"summary     {summary.record_file}")
        lines += [f"failed      {f['shard']}: {f['reason']}" for f in summary.shards_failed[:5]]
    if summary.mean_psnr_db is not None and not math.isfinite(summary.mean_psnr_db):
        lines.append("warning: infinite PSNR means some images were unchanged")
    return "\n".join(lines)


format_shard_summary = format_summary
"""The shard job's formatter before both jobs shared one; an alias until udp-datasets 0.3."""


def library_versions() -> dict[str, str]:
    """The versions that decide a job's output bytes, recorded with every job and report."""
    import datasets
    import diffusers
    import torch

    from .. import __version__

    return {"udp_datasets": __version__, "torch": torch.__version__,
            "diffusers": diffusers.__version__, "datasets": datasets.__version__}


def utc_now() -> str:
    """Now, ISO 8601 in UTC to the second (``started_at`` / ``finished_at``)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def mean_psnr(psnr_sum: float, psnr_count: int) -> float | None:
    """The mean of the finite PSNRs, rounded as records keep it; None when there were none."""
    return round(psnr_sum / psnr_count, 3) if psnr_count else None


def rate(images: int, seconds: float) -> float:
    """Images per second, rounded as records keep it."""
    return round(images / seconds, 3) if seconds > 0 else 0.0
