"""Verify a protected dataset folder against its manifest (and, optionally, its source).

``verify_directory(DIR)`` re-hashes every published image in DIR and compares it with
``manifest.parquet`` (see :mod:`udp_datasets.records.manifest`); the budget comes from the job
record (``udp_protection.json``). Output of the shard job keeps both in ``DIR/.udp/``
(``manifest.parquet``, or the per-shard ``shards/*.manifest.parquet`` before they are
merged, and ``job.json``); they are read from there. Every sample ends in at most a few of these categories,
each reported with the sample's manifest key and where it lives:

``missing``      a manifest row with no published image
``extra``        a published image that no manifest row describes
``altered``      a published image whose bytes differ from the manifest's SHA-256
``over_budget``  L-inf above the budget (recorded in the manifest, or measured with a source)
``unprotected``  identical to its source (recorded L-inf 0, source bytes, or source pixels)

plus ``problems``: folder-level faults (no manifest, unreadable shard, config hash mismatch, a
manifest whose SHA-256 is not the job record's ``manifest_sha256``, and the checks of
:mod:`~udp_datasets.publish.integrity`), and ``warnings``: what could not be checked and does not fail
the folder (a record written by 0.2.x has no manifest digest, so the manifest's integrity is not provable).

The images are read by :mod:`udp_datasets.formats.layouts` (Arrow ``save_to_disk``, Parquet,
WebDataset tars, image folders), so the same code verifies a local output and a downloaded
Hub snapshot; this module only matches, checks and reports.

How images are matched to manifest rows. Matching by content first (an image whose SHA-256
is an unused manifest ``sha256`` is verified), then by identity for what is left: the
``__key__`` in tar shards, the relative path in image folders, and for the row-ordered
layouts (Arrow, Parquet) the position *between the nearest verified neighbours*, like a diff.
So one re-encoded row is reported as ``altered`` under its own key, a dropped row as
``missing``, an appended one as ``extra``, and nothing shifts. No key column has to be added
to the published data for this.

How "unprotected" is detected without the source, for every published image whatever its manifest
row says (a row edited to match an unprotected image changes nothing): its bytes are a
source file's (manifest ``source_sha256``), or its decoded pixels hash to a manifest ``key``
(by default the key *is* the SHA-256 of the source's decoded pixels, see
:meth:`~udp_datasets.images.DecodedImage.pixel_sha256`), or a manifest row that records
L-inf 0. With ``source=`` (any SRC that ``protect`` accepts, or a folder of tar / Parquet
shards) each sample's source is found by ``source_sha256``, both are decoded the way the
protector decodes them, and L-inf is measured on the 8-bit pixels.

Memory: image hashes are streamed; bytes are kept only for the images that need decoding
(altered / extra ones, and with ``source=`` every checked sample with its source).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..sources.errors import SourceError
from ..records.names import MANIFEST_FILE, MANIFEST_FILES, RECORD_FILES, SHARD_MANIFEST_SUFFIX, SHARDS_FOLDER
from ..records.signing import signature_problem
from ..sources.keys import is_hidden
from ..formats.layouts import Layout, detect_layout, iter_source_images
from .integrity import failed_shards_problem, manifest_problem, manifest_warning, tar_problems, unprotected_columns

logger = logging.getLogger(__name__)

CATEGORIES = ("missing", "extra", "altered", "over_budget", "unprotected")


class VerifyError(ValueError):
    """The target cannot be verified at all (not a folder, no images, unreadable)."""


# ---------------------------------------------------------------------------- report
@dataclass
class Finding:
    """One sample in one category: its manifest key (None for an extra image), where it is."""

    key: str | None
    location: str | None
    detail: str


@dataclass
class VerifyReport:
    """What :func:`verify_directory` found; ``ok`` is True only when nothing is wrong."""

    target: str
    layout: str | None
    expected: int = 0  # manifest rows
    found: int = 0  # published images
    verified: int = 0  # images whose bytes match their manifest row and pass every check
    budget_levels: int | None = None
    config_hash: str | None = None
    source: str | None = None
    source_checked: int = 0  # samples whose L-inf was measured against the source
    source_unavailable: int = 0  # samples whose source was not found in ``source``
    commit: str | None = None  # for Hub targets: the commit that was verified
    findings: dict[str, list[Finding]] = field(default_factory=lambda: {c: [] for c in CATEGORIES})
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what could not be checked; ``ok`` does not depend on them

    @property
    def ok(self) -> bool:
        return not self.problems and not any(self.findings.values())

    def keys(self, category: str) -> list[str | None]:
        """The manifest keys (None for extras) reported under ``category``."""
        return [f.key for f in self.findings[category]]

    def locations(self, category: str) -> list[str | None]:
        return [f.location for f in self.findings[category]]

    def add(self, category: str, key: str | None, location: str | None, detail: str) -> None:
        """Record a finding (once per sample and category: the first reason is kept)."""
        if not any(f.key == key and f.location == location for f in self.findings[category]):
            self.findings[category].append(Finding(key, location, detail))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        return out

    def format(self, max_listed: int = 20) -> str:
        """Human-readable report: a verdict line, counts, then each failing sample."""
        verdict = "OK" if self.ok else "FAILED"
        lines = [f"verify {self.target}" + (f" @ {self.commit}" if self.commit else "") + f": {verdict}",
                 f"layout      {self.layout or 'unknown'}",
                 f"samples     {self.found} published, {self.expected} in manifest, {self.verified} verified",
                 f"budget      {self.budget_levels if self.budget_levels is not None else 'unknown'} levels"
                 + (f" (config {self.config_hash})" if self.config_hash else "")]
        if self.source:
            lines.append(f"source      {self.source}: L-inf measured for {self.source_checked} samples"
                         + (f", {self.source_unavailable} not found in the source" if self.source_unavailable
                            else ""))
        for problem in self.problems:
            lines.append(f"problem     {problem}")
        for warning in self.warnings:
            lines.append(f"warning     {warning}")
        for category in CATEGORIES:
            items = self.findings[category]
            if not items:
                continue
            lines.append(f"{category:<11} {len(items)}")
            for f in items[:max_listed]:
                name = f.key if f.key is not None else "(no manifest row)"
                lines.append(f"  - {name} [{f.location}]: {f.detail}")
            if len(items) > max_listed:
                lines.append(f"  ... and {len(items) - max_listed} more (use --json for all)")
        return "\n".join(lines)


# -------------------------------------------------------------------- job record
def read_record(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The job record of a protected folder: ``udp_protection.json`` (or the shard job's
    ``.udp/job.json``); None if there is none."""
    for name in RECORD_FILES:
        path = Path(directory) / name
        if path.is_file():
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise VerifyError(f"{path} is not valid JSON: {exc}") from exc
            if isinstance(record, dict):
                record.setdefault("_file", name)
                return record
    return None


def record_budget(record: dict[str, Any] | None) -> tuple[int | None, str | None]:
    """(budget in 8-bit levels, config hash) from a job record's config."""
    from ..config import ConfigError, ProtectionConfig

    if not record or not isinstance(record.get("config"), dict):
        return None, None
    config = record["config"]
    try:
        cfg = ProtectionConfig.from_dict(config)
        return cfg.budget_levels, record.get("config_hash") or cfg.hash()
    except (ConfigError, TypeError):  # a newer config version: read the budget directly
        eps = config.get("epsilon")
        levels = int(round(float(eps) * 255)) if isinstance(eps, (int, float)) else None
        return levels, record.get("config_hash")


def find_manifest(directory: str | os.PathLike) -> Path | None:
    for name in MANIFEST_FILES:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def load_manifest(directory: str | os.PathLike) -> Any:
    """``manifest.parquet`` (or the shard job's ``.udp/manifest.parquet``), else the per-shard
    manifests (``.udp/shards/*.manifest.parquet``) of a run that has not merged them yet."""
    import pyarrow as pa

    from ..records.manifest import read_manifest

    directory = Path(directory)
    path = find_manifest(directory)
    if path is not None:
        return read_manifest(path)
    parts = sorted(directory.glob(f"{SHARDS_FOLDER}/**/*{SHARD_MANIFEST_SUFFIX}")) or sorted(
        p for p in directory.rglob(f"*{SHARD_MANIFEST_SUFFIX}")
        if not is_hidden(p.relative_to(directory).as_posix()))
    if parts:
        return pa.concat_tables([read_manifest(p) for p in parts])
    return None


def protected_layout(directory: str | os.PathLike, image_column: str | None = None) -> Layout:
    """The layout of a protected folder (:func:`udp_datasets.formats.layouts.detect_layout`),
    its image column taken from the job record unless given; :class:`VerifyError` if none."""
    if not Path(directory).is_dir():
        raise VerifyError(f"{directory} is not a folder")
    record = read_record(directory) or {}
    try:
        return detect_layout(directory, image_column or record.get("image_column") or "image")
    except SourceError as exc:
        raise VerifyError(str(exc)) from exc


# --------------------------------------------------------------------- the verifier
@dataclass
class PublishedImage:
    """One image found in the folder. ``identity`` is what a manifest row can name it by
    (tar ``__key__`` or image-folder path); None for row-ordered layouts."""

    location: str
    identity: str | None
    position: int
    sha256: str  # "" for an unreadable entry
    alias: str | None = None  # a second name a manifest row may use (a tar member's full name)
    unreadable: bool = False
    pixel_sha256: str | None = None  # of the decoded pixels (None: undecodable)


def verify_directory(directory: str | os.PathLike, *, source: str | None = None,
                     source_split: str | None = None, image_column: str | None = None,
                     target: str | None = None, sign_key: bytes | None = None,
                     allow_failed_shards: bool = False) -> VerifyReport:
    """Verify a protected folder (see the module docstring); never raises for bad samples.
    ``sign_key``: the job record's ``manifest_signature`` must hold under it (:mod:`~udp_datasets.records.signing`).
    A job whose record lists failed shards fails unless ``allow_failed_shards``."""
    root = Path(directory)
    report = VerifyReport(target=target or str(root), layout=None, source=source)
    inputs = _read_inputs(root, report, image_column)
    record = read_record(root) if root.is_dir() else None
    report.problems.extend(p for p in (signature_problem(record, sign_key),
                                       None if allow_failed_shards else failed_shards_problem(record)) if p)
    if inputs is None:
        return report
    layout, rows = inputs
    items = _hash_images(layout, report, root)
    if items is None:
        return report
    if layout.name == "webdataset":
        report.problems.extend(tar_problems(root, layout.files))
    report.problems.extend(unprotected_columns(layout))
    pairs, altered, extra, missing = _match(items, rows, layout)
    source_index = _SourceIndex(source, source_split) if source else None
    blobs = _fetch_for_decoding(layout, rows, pairs, altered, set(extra), source_index)
    checks = _SampleChecks(report, rows, blobs, source_index)
    for position in sorted(set(pairs) | set(altered) | set(extra)):
        checks.check(items[position], pairs.get(position), altered.get(position))
    for m in missing:
        row = rows[m]
        where = layout.manifest_identity(row["key"], row["source"]) or row["source"]
        report.add("missing", row["key"], where, "in the manifest but not in the published data")
    return report


def _read_inputs(root: Path, report: VerifyReport, image_column: str | None
                 ) -> tuple[Layout, list[dict]] | None:
    """The layout and manifest rows; budget, config hash and folder problems into ``report``."""
    try:
        layout = protected_layout(root, image_column)
    except VerifyError as exc:
        report.problems.append(str(exc))
        return None
    report.layout = layout.name
    record = read_record(root)
    if record is None:
        report.problems.append(f"no job record ({' / '.join(RECORD_FILES)}): the budget and config are unknown")
    report.budget_levels, report.config_hash = record_budget(record)
    if record is not None and report.budget_levels is None:
        report.problems.append(f"the job record {record.get('_file')} has no config: the budget is unknown")
    try:
        manifest = load_manifest(root)
    except Exception as exc:  # empty, truncated or foreign Parquet: a finding, not a crash
        report.problems.append(f"the manifest cannot be read ({type(exc).__name__}: {exc}): nothing to verify "
                               "the images against")
        return None
    if manifest is None:
        report.problems.append(f"no {MANIFEST_FILE}: nothing to verify the images against")
        return None
    edited = manifest_problem(record, find_manifest(root))
    if edited:
        report.problems.append(edited)
    unprovable = manifest_warning(record, find_manifest(root))
    if unprovable:
        report.warnings.append(unprovable)
    rows = manifest.to_pylist()
    report.expected = len(rows)
    hashes = {r["config_hash"] for r in rows} - {None}
    if report.config_hash and hashes - {report.config_hash}:
        report.problems.append(f"manifest rows carry config hash(es) {sorted(hashes - {report.config_hash})}, "
                               f"the job record says {report.config_hash}")
    return layout, rows


def _hash_images(layout: Layout, report: VerifyReport, root: Path) -> list[PublishedImage] | None:
    """Pass 1: the SHA-256 of every published image, in order (None: the data is unreadable)."""
    items: list[PublishedImage] = []
    try:
        for position, (location, identity, data) in enumerate(layout.iter_images()):
            sha = hashlib.sha256(data).hexdigest() if data is not None else ""
            items.append(PublishedImage(location, identity, position, sha, _alias(location), data is None,
                                        _pixel_hash(data) if data is not None else None))
    except Exception as exc:  # a truncated tar or a broken Parquet file: name it, don't crash
        report.problems.append(f"cannot read the {layout.name} data in {root}: {type(exc).__name__}: {exc}")
        return None
    report.found = len(items)
    return items


def _match(items: list[PublishedImage], rows: list[dict], layout: Layout
           ) -> tuple[dict[int, int], dict[int, int], list[int], list[int]]:
    """(verified pairs position->row, altered position->row, extra positions, missing rows)."""
    by_sha: dict[str, list[int]] = defaultdict(list)
    for m, row in enumerate(rows):
        by_sha[row["sha256"]].append(m)
    identities = [layout.manifest_identity(r["key"], r["source"]) for r in rows]
    used = [False] * len(rows)
    pairs: dict[int, int] = {}
    for item in items:  # 1. content: same bytes; prefer the row that names this image
        candidates = [m for m in by_sha.get(item.sha256, ()) if not used[m]]
        if not candidates:
            continue
        named = [m for m in candidates if identities[m] is not None and identities[m] in (item.identity, item.alias)]
        m = (named or candidates)[0]
        used[m] = True
        pairs[item.position] = m
    altered: dict[int, int] = {}
    by_identity: dict[str, list[int]] = defaultdict(list)
    for m, ident in enumerate(identities):
        if ident is not None and not used[m]:
            by_identity[ident].append(m)
    for item in items:  # 2. identity: the tar key / file path a manifest row names
        if item.position in pairs or item.identity is None:
            continue
        for m in [*by_identity.get(item.identity, ()), *by_identity.get(item.alias or "", ())]:
            if not used[m]:
                used[m] = True
                altered[item.position] = m
                break
    if layout.ordered:  # 3. order: pair leftovers between the nearest verified neighbours
        free = [m for m in range(len(rows)) if not used[m]]
        matched = sorted(pairs.items())
        positions = [p for p, _ in matched]
        for item in items:
            p = item.position
            if p in pairs or p in altered:
                continue
            i = bisect.bisect_left(positions, p)
            lo = matched[i - 1][1] if i > 0 else -1
            hi = matched[i][1] if i < len(matched) else len(rows)
            j = bisect.bisect_right(free, lo)
            while j < len(free) and used[free[j]]:
                j += 1
            if j < len(free) and free[j] < hi:
                used[free[j]] = True
                altered[p] = free[j]
    extra = [it.position for it in items if it.position not in pairs and it.position not in altered]
    missing = [m for m in range(len(rows)) if not used[m]]
    return pairs, altered, extra, missing


def _alias(location: str) -> str | None:
    """``shard.tar:dir/abc.png`` -> ``dir/abc.png`` (how a shard job manifest may name a member)."""
    return location.split(":", 1)[1] if ":" in location and " row " not in location else None


class _SampleChecks:
    """The checks of one matched, altered or extra image (pass 2), recorded in ``report``."""

    def __init__(self, report: VerifyReport, rows: list[dict], blobs: dict[int, bytes],
                 source_index: "_SourceIndex | None"):
        self.report, self.rows, self.blobs, self.source_index = report, rows, blobs, source_index
        self.source_shas = {r["source_sha256"]: r["key"] for r in rows if r["source_sha256"]}
        self.manifest_keys = {r["key"] for r in rows if r["key"]}

    def check(self, item: PublishedImage, paired: int | None, altered: int | None) -> None:
        """``paired``: the manifest row whose bytes it has; ``altered``: the row it stands in for."""
        report = self.report
        if paired is not None:
            row = self.rows[paired]
            bad = self._check_recorded(item, row)
        elif altered is not None:
            row = self.rows[altered]
            report.add("altered", row["key"], item.location, "unreadable image entry" if item.unreadable else
                       f"SHA-256 {item.sha256[:12]}... differs from the manifest's {str(row['sha256'])[:12]}...")
            bad = True
        else:
            row = None
            report.add("extra", None, item.location, "unreadable image entry" if item.unreadable else
                       f"SHA-256 {item.sha256[:12]}... is in no manifest row")
            bad = True
        data = self.blobs.get(item.position)
        if paired is None:
            bad |= _check_unprotected(report, item, row, data, self.source_shas, self.manifest_keys,
                                      self.source_index)
        if self.source_index is not None and row is not None and data is not None:
            src = self.source_index.bytes_by_sha.get(row["source_sha256"])
            if src is None:
                report.source_unavailable += 1
            else:
                bad |= _check_against_source(report, item, row, data, src, report.budget_levels, paired is not None)
        elif self.source_index is not None and row is not None and row["source_sha256"] is not None:
            report.source_unavailable += 1
        if paired is not None and not bad:
            report.verified += 1

    def _check_recorded(self, item: PublishedImage, row: dict) -> bool:
        """What the manifest row of a byte-identical image records: its L-inf and source hash."""
        report, budget = self.report, self.report.budget_levels
        linf = row["linf"]
        bad = False
        if linf is None or (budget is not None and linf > budget):
            report.add("over_budget", row["key"], item.location,
                       f"manifest records L-inf {linf} levels, budget {budget}")
            bad = True
        if linf == 0:
            report.add("unprotected", row["key"], item.location, "manifest records it unchanged (L-inf 0)")
            bad = True
        elif row["source_sha256"] and row["source_sha256"] == row["sha256"]:
            report.add("unprotected", row["key"], item.location, "its bytes are the source file's")
            bad = True
        # whatever its row says: pixels or bytes that are a source's (manifest key = source pixel hash)
        elif item.pixel_sha256 in self.manifest_keys or item.sha256 in self.source_shas:
            report.add("unprotected", row["key"], item.location, "pixels identical to the source of sample "
                       f"{self.source_shas.get(item.sha256) or item.pixel_sha256}, whatever the manifest row says")
            bad = True
        return bad


def _fetch_for_decoding(layout: Layout, rows: list[dict], pairs: dict[int, int], altered: dict[int, int],
                        extra: set[int], source_index: "_SourceIndex | None") -> dict[int, bytes]:
    """Pass 2: the bytes of the images that must be decoded (altered and extra ones, and with a
    source every sample whose source was found), after loading that source."""
    need_decode = set(altered) | extra
    if source_index is not None:
        wanted = {rows[m]["source_sha256"] for m in list(pairs.values()) + list(altered.values())} - {None}
        source_index.load(wanted, want_pixels=bool(need_decode))
        need_decode |= {p for p, m in list(pairs.items()) + list(altered.items())
                        if rows[m]["source_sha256"] in source_index.bytes_by_sha}
    if not need_decode:
        return {}
    out: dict[int, bytes] = {}
    for position, (_, _, data) in enumerate(layout.iter_images()):
        if position in need_decode and data is not None:
            out[position] = data
    return out


def _check_unprotected(report: VerifyReport, item: PublishedImage, row: dict | None, data: bytes | None,
                       source_shas: dict[str, str], manifest_keys: set[str], source_index: "_SourceIndex | None",
                       ) -> bool:
    """Is an altered or extra image simply a source image (bytes or pixels)?"""
    key = row["key"] if row else None
    if item.sha256 in source_shas:
        report.add("unprotected", key or source_shas[item.sha256], item.location,
                   f"byte-identical to the source image of sample {source_shas[item.sha256]}")
        return True
    pixel_hash = item.pixel_sha256  # decoded once, in pass 1
    if pixel_hash is None:
        return False
    if pixel_hash in manifest_keys:
        report.add("unprotected", key or pixel_hash, item.location,
                   f"pixels identical to the source of sample {pixel_hash}")
        return True
    if source_index is not None and pixel_hash in source_index.pixel_hashes:
        report.add("unprotected", key, item.location,
                   f"pixels identical to source image {source_index.pixel_hashes[pixel_hash]}")
        return True
    return False


def _check_against_source(report: VerifyReport, item: PublishedImage, row: dict, data: bytes, src: bytes,
                          budget: int | None, verified: bool) -> bool:
    from ..images import ImageError, load_image

    report.source_checked += 1
    try:
        protected = load_image(data)
        clean = load_image(src)
    except ImageError as exc:
        report.add("altered", row["key"], item.location, f"cannot be decoded: {exc}")
        return True
    if protected.pixels.shape != clean.pixels.shape:
        report.add("over_budget", row["key"], item.location,
                   f"shape {protected.pixels.shape} differs from the source's {clean.pixels.shape}")
        return True
    linf = int(np.abs(protected.pixels.astype(np.int16) - clean.pixels.astype(np.int16)).max(initial=0))
    bad = False
    if (protected.alpha is None) != (clean.alpha is None) or (
            clean.alpha is not None and not np.array_equal(protected.alpha, clean.alpha)):
        report.add("over_budget", row["key"], item.location, "alpha channel differs from the source's")
        bad = True
    if linf == 0:
        report.add("unprotected", row["key"], item.location, "pixels identical to the source (measured)")
        bad = True
    elif budget is not None and linf > budget:
        report.add("over_budget", row["key"], item.location,
                   f"measured L-inf {linf} levels against the source, budget {budget}")
        bad = True
    elif verified and row["linf"] is not None and linf != row["linf"]:
        report.problems.append(f"sample {row['key']}: manifest records L-inf {row['linf']}, measured {linf}")
        bad = True
    return bad


def _pixel_hash(data: bytes) -> str | None:
    from ..images import ImageError, load_image

    try:
        return load_image(data).pixel_sha256()
    except ImageError:
        return None


class _SourceIndex:
    """The clean source, indexed by SHA-256 of each image's original bytes."""

    def __init__(self, source: str, split: str | None = None):
        self.source, self.split = source, split
        self.bytes_by_sha: dict[str, bytes] = {}
        self.pixel_hashes: dict[str, str] = {}

    def load(self, wanted: set[str], want_pixels: bool) -> None:
        for name, data in iter_source_images(self.source, self.split):
            sha = hashlib.sha256(data).hexdigest()
            if sha in wanted:
                self.bytes_by_sha[sha] = data
            if want_pixels:
                pixel_hash = _pixel_hash(data)
                if pixel_hash is not None:
                    self.pixel_hashes.setdefault(pixel_hash, name)


__all__ = ["CATEGORIES", "Finding", "VerifyError", "VerifyReport", "load_manifest", "protected_layout",
           "read_record", "record_budget", "verify_directory"]
