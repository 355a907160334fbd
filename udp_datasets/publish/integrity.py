"""Checks of a protected folder's integrity that ``verify`` runs beside matching the manifest.

* :func:`tar_problems`: a tar sample holding two members of one name (``K.jpg`` and ``K.jpeg``
  both written as ``K.png`` by an older version, or a hand-made shard: readers keep one of them
  or fail, "Duplicate field"), or a member no protect job copies (an AVIF or HEIC image, image
  bytes under another extension, a link).
* :func:`unprotected_columns`: a Parquet or Arrow table with a second image column, copied
  through unprotected.
* :func:`manifest_problem`: a manifest that is not the one the job wrote (its digest differs
  from the record's, or a 0.3 record has none); :func:`manifest_warning`: a record of 0.2.x, made
  before digests, whose manifest can be matched but not proven unedited.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..records.versions import release
from ..sources.columns import binary_columns, image_cells, image_like_columns

DIGESTS_SINCE = (0, 3)
"""The first release whose job records carry ``manifest_sha256`` (issue 20)."""


def tar_problems(root: Path, files: list[str]) -> list[str]:
    """One problem per tar sample that no protect job writes: two members of one name in a
    sample, or a member the readers refuse (:func:`~udp_datasets.formats.webdataset.iter_tar_samples`:
    a link, an unsafe name, an image in a format the job does not protect, image bytes under
    another extension), which would reach a reader unprotected or outside the folder."""
    from ..formats.webdataset import iter_tar_samples
    from ..sources.shards import ShardReadError

    problems: list[str] = []
    for rel in files:
        try:
            for sample in iter_tar_samples(str(root / rel)):
                if sample.problem is not None:
                    problems.append(f"{rel}: {sample.problem}")
                names = [m.info.name for m in sample.members]
                twice = sorted({n for n in names if names.count(n) > 1})
                if twice and sample.key is not None:
                    problems.append(f"{rel}: sample {sample.key!r} holds two members named {twice[0]!r} "
                                    "(readers keep one or fail)")
        except (ShardReadError, OSError):
            continue  # an unreadable shard is reported when its images are read
    return problems


def unprotected_columns(layout: Any) -> list[str]:
    """One problem per Parquet file (or Arrow folder) with image-like columns besides the protected
    one, or a cell of another column that holds an image (bytes, base64, a ``data:image`` URI,
    :mod:`udp_datasets.sources.columns`): those images were never protected."""
    problems: list[str] = []
    for rel, schema, batches in _tables(layout):
        column = _protected_column(schema, layout.image_column)
        others = [c for c in image_like_columns(schema) if c != column]
        if others:
            problems.append(f"{rel}: image column(s) {others} besides {column!r}, the protected one: their images "
                            "were not protected (protect them, or drop them with --drop-columns)")
            continue
        side = [c for c in binary_columns(schema) if c != column]
        row = 0
        for batch in batches(side) if side else ():
            found = image_cells(batch, side)
            if found:
                first = min(found)
                problems.append(f"{rel} row {row + first}: {found[first]}")
                break
            row += batch.num_rows
    return problems


def _protected_column(schema: Any, preferred: str) -> str | None:
    from ..sources.parquet import find_image_column

    try:
        return find_image_column(schema, None, preferred)
    except Exception:  # noqa: BLE001 - no image column: every image-like column is unprotected
        return None


def _tables(layout: Any) -> list[tuple[str, Any, Any]]:
    """``(name, schema, batches(columns))`` of an Arrow or Parquet layout's tables (else none)."""
    if layout.name == "arrow":
        import datasets

        ds = datasets.load_from_disk(str(layout.root / "data"))
        return [("data", ds.features.arrow_schema,
                 lambda cols: ds.with_format("arrow").select_columns(cols).iter(batch_size=1024))]
    if layout.name != "parquet":
        return []
    import pyarrow.parquet as pq

    out = []
    for rel in layout.files:
        try:
            pf = pq.ParquetFile(layout.root / rel)
        except Exception:  # noqa: BLE001 - unreadable files are reported when their images are read
            continue
        out.append((rel, pf.schema_arrow,
                    lambda cols, pf=pf: (pa_table(b) for b in pf.iter_batches(batch_size=1024, columns=cols))))
    return out


def pa_table(batch: Any) -> Any:
    import pyarrow as pa

    return pa.Table.from_batches([batch])


def manifest_problem(record: dict[str, Any] | None, manifest: Path | None) -> str | None:
    """Why the manifest is not the one the job wrote: its SHA-256 differs from the job record's
    ``manifest_sha256`` (:func:`~udp_datasets.records.manifest.manifest_digest`), or the record has
    none though its writer recorded one (0.3 on; :func:`written_before_digests` says which records
    had none to give). Casual edits only: a forger who rewrites manifest and record together passes this check."""
    from ..records.manifest import manifest_digest

    if record is None or manifest is None:
        return None  # reported already: no record, or per-shard manifests not merged
    recorded = record.get("manifest_sha256")
    if not recorded:
        if written_before_digests(record):
            return None  # manifest_warning says what is not proven
        return (f"the job record {record.get('_file')} has no manifest_sha256: the manifest cannot be checked "
                "for edits (re-run the job with this version to record it)")
    actual = manifest_digest(manifest)
    if actual != recorded:
        return (f"the manifest's SHA-256 {actual[:16]}... differs from the {recorded[:16]}... the job record "
                f"{record.get('_file')} holds: it was edited after the job, its rows cannot be trusted")
    return None


def manifest_warning(record: dict[str, Any] | None, manifest: Path | None) -> str | None:
    """What ``verify`` cannot prove of a job made before manifest digests (0.2.x): it still checks
    every image against the manifest and its pixel hashes, but not that the manifest is the job's."""
    if record is None or manifest is None or record.get("manifest_sha256"):
        return None
    writer = written_before_digests(record)
    if writer is None:
        return None
    return f"no manifest digest (written by {writer}): pixel hashes checked, manifest integrity not provable"


def written_before_digests(record: dict[str, Any]) -> str | None:
    """Which release wrote a job record before records carried ``manifest_sha256`` (``"0.2.x"``,
    or ``"udp-datasets < 0.3"`` when it names none); None for a record of 0.3 or later.

    Why two signs and not the version alone: a 0.3 job always writes ``config_version`` into its
    config (0.1 and 0.2 never did), and its ``versions`` name its release; a record must show both
    signs of an old writer, so a 0.3 record whose digest was removed still fails."""
    config = record.get("config")
    if not isinstance(config, dict) or "config_version" in config:
        return None
    versions = record.get("versions")
    written = versions.get("udp_datasets") if isinstance(versions, dict) else None
    if written is None:
        return "udp-datasets < 0.3"
    numbers = release(written)
    if numbers is None or numbers[:2] >= DIGESTS_SINCE:
        return None
    return f"{numbers[0]}.{numbers[1] if len(numbers) > 1 else 0}.x"


def failed_shards_problem(record: dict[str, Any] | None) -> str | None:
    """A job whose record lists failed shards is incomplete: their samples are in no manifest row,
    so matching alone would call the rest verified."""
    failed = (record or {}).get("shards_failed") or []
    if not failed:
        return None
    return (f"the job has {len(failed)} failed shard(s) ({failed_shard_names(failed)}) whose samples are missing: "
            "re-run protect to redo them (--allow-failed-shards verifies the rest)")


def failed_shard_names(failed: list[dict[str, Any]]) -> str:
    """The first five failed shards of a job record's ``shards_failed``, named (``...`` when there are more)."""
    return ", ".join(str(f.get("shard")) for f in failed[:5]) + (" ..." if len(failed) > 5 else "")
