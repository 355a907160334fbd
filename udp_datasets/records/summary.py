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
class Tally:
    """What a job counts while it protects, mergeable: one per shard (kept in its completion
    marker), merged into the job's (the shard job), or one for the whole job (the dataset job).

    Why sums and not means: a mean of means is wrong when shards differ in size, so the PSNR is
    kept as a sum and a count of the finite values and averaged once (:attr:`mean_psnr_db`); an
    unchanged image (infinite PSNR) is counted in ``images`` but not in the mean.
    """

    count: int = 0  # protected samples (rows; tar samples with images)
    images: int = 0  # protected images (a tar sample may hold several)
    errors: int = 0  # quarantined samples
    passthrough: int = 0  # tar samples with no image, copied unchanged
    max_linf: int = 0  # levels
    psnr_sum: float = 0.0  # of the finite PSNRs, dB
    psnr_count: int = 0

    def add(self, linf: int, psnr: float | None) -> None:
        """One protected image: its L-inf in levels and its PSNR (None or infinite: unchanged)."""
        self.images += 1
        self.max_linf = max(self.max_linf, int(linf))
        if psnr is not None and math.isfinite(psnr):
            self.psnr_sum += psnr
            self.psnr_count += 1

    def merge(self, other: Tally) -> Tally:
        """Add ``other``'s counts to this tally (in place, returned): merging in shard order
        gives the same sums whichever rank did which shard."""
        self.count += other.count
        self.images += other.images
        self.errors += other.errors
        self.passthrough += other.passthrough
        self.max_linf = max(self.max_linf, other.max_linf)
        self.psnr_sum += other.psnr_sum
        self.psnr_count += other.psnr_count
        return self

    @property
    def mean_psnr_db(self) -> float | None:
        """The mean of the finite PSNRs, rounded as records keep it; None when there were none."""
        return round(self.psnr_sum / self.psnr_count, 3) if self.psnr_count else None

    def to_marker(self) -> dict[str, Any]:
        """The tally as a shard's completion marker keeps it (its key names are the marker's)."""
        return {"count": self.count, "images": self.images, "errors": self.errors, "passthrough": self.passthrough,
                "max_linf_levels": self.max_linf, "mean_psnr_db": self.mean_psnr_db, "psnr_sum": self.psnr_sum,
                "psnr_count": self.psnr_count}

    @classmethod
    def from_marker(cls, marker: dict[str, Any]) -> Tally:
        """A shard's tally back from its completion marker (a missing key counts 0)."""
        return cls(count=int(marker.get("count") or 0), images=int(marker.get("images") or 0),
                   errors=int(marker.get("errors") or 0), passthrough=int(marker.get("passthrough") or 0),
                   max_linf=int(marker.get("max_linf_levels") or 0),
                   psnr_sum=float(marker.get("psnr_sum") or 0.0), psnr_count=int(marker.get("psnr_count") or 0))


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
    generator: dict[str, Any] | None = None  # the generator engines: its source and weights' sha256
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
    manifest_sha256: str | None = None  # of the manifest file's bytes, when the job ended (records.manifest)
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
    return "\n".join(lines)


def utc_now() -> str:
    """Now, ISO 8601 in UTC to the second (``started_at`` / ``finished_at``)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def rate(images: int, seconds: float) -> float:
    """Images per second, rounded as records keep it."""
    return round(images / seconds, 3) if seconds > 0 else 0.0
