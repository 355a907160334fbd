"""Verify a protected dataset folder against its manifest (and, optionally, its source).

``verify_directory(DIR)`` re-hashes every published image in DIR and compares it with
``manifest.parquet`` (see :mod:`udp_datasets.provenance`); the budget comes from the job
record (``udp_protection.json``). Output of the shard runner keeps both in ``DIR/.udp/``
(``manifest.parquet``, or the per-shard ``shards/*.manifest.parquet`` before they are
merged, and ``job.json``); they are read from there. Every sample ends in at most a few of these categories,
each reported with the sample's manifest key and where it lives:

``missing``      a manifest row with no published image
``extra``        a published image that no manifest row describes
``altered``      a published image whose bytes differ from the manifest's SHA-256
``over_budget``  L-inf above the budget (recorded in the manifest, or measured with a source)
``unprotected``  identical to its source (recorded L-inf 0, source bytes, or source pixels)

plus ``problems``: folder-level faults (no manifest, unreadable shard, config hash mismatch).

Layouts understood (the same code verifies a local output and a downloaded Hub snapshot):

* ``arrow``: ``DIR/data`` is a ``save_to_disk`` folder (``udp-datasets protect``);
* ``parquet``: Parquet data files (``data/train-*.parquet`` as published, or the runner's
  Parquet shards), with an ``Image`` column of PNG bytes;
* ``webdataset``: ``*.tar`` shards; a sample's key is the webdataset ``__key__``;
* ``imagefolder``: image files (+ ``metadata.jsonl``) at the source's relative paths.

How images are matched to manifest rows. Matching by content first (an image whose SHA-256
is an unused manifest ``sha256`` is verified), then by identity for what is left: the
``__key__`` in tar shards, the relative path in image folders, and for the row-ordered
layouts (Arrow, Parquet) the position *between the nearest verified neighbours*, like a diff.
So one re-encoded row is reported as ``altered`` under its own key, a dropped row as
``missing``, an appended one as ``extra``, and nothing shifts. No key column has to be added
to the published data for this.

How "unprotected" is detected without the source: a published image whose bytes are a
source file's (manifest ``source_sha256``), or whose decoded pixels hash to a manifest ``key``
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
import tarfile
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..sources.keys import IMAGE_EXTENSIONS, TAR_SUFFIXES, is_image_extension, split_key

logger = logging.getLogger(__name__)

CATEGORIES = ("missing", "extra", "altered", "over_budget", "unprotected")
RECORD_FILE = "udp_protection.json"
# job records, first found wins: protect's, then the shard runner's (DST/.udp/job.json), then older names
RECORD_FILES = (RECORD_FILE, ".udp/job.json", "udp_job.json", "udp_summary.json")
MANIFEST_FILE = "manifest.parquet"
MANIFEST_FILES = (MANIFEST_FILE, ".udp/manifest.parquet")  # protect's, the shard runner's
_IGNORED_NAMES = frozenset({"README.md", ".gitattributes", "errors.jsonl", MANIFEST_FILE, *RECORD_FILES})


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
    """The job record of a protected folder: ``udp_protection.json`` (or the shard runner's
    ``.udp/job.json``, or the older ``udp_summary.json``); None if there is none."""
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
    """``manifest.parquet`` (or the runner's ``.udp/manifest.parquet``), else the per-shard
    manifests (``.udp/shards/*.manifest.parquet``) of a run that has not merged them yet."""
    import pyarrow as pa

    from ..jobs.manifest import read_manifest

    directory = Path(directory)
    path = find_manifest(directory)
    if path is not None:
        return read_manifest(path)
    parts = sorted(directory.glob(".udp/shards/**/*.manifest.parquet")) or sorted(
        p for p in directory.rglob("*.manifest.parquet") if not _hidden(p, directory))
    if parts:
        return pa.concat_tables([read_manifest(p) for p in parts])
    return None


# ------------------------------------------------------------------------ layouts
@dataclass
class PublishedImage:
    """One image found in the folder. ``identity`` is what a manifest row can name it by
    (tar ``__key__`` or image-folder path); None for row-ordered layouts."""

    location: str
    identity: str | None
    position: int
    sha256: str
    alias: str | None = None  # a second name a manifest row may use (a tar member's full name)


class Layout:
    """A protected folder's data files and how to iterate the images in them."""

    name = "?"
    ordered = False  # rows are in manifest order (Arrow / Parquet)

    def __init__(self, root: Path, files: list[str], image_column: str = "image"):
        self.root, self.files, self.image_column = root, files, image_column

    def iter_images(self) -> Iterator[tuple[str, str | None, bytes | None]]:
        """(location, identity, bytes) for every image; bytes None = unreadable row.
        A location ``shard.tar:member`` also lets a manifest row name the member."""
        raise NotImplementedError

    def manifest_identity(self, key: str | None, source: str | None) -> str | None:
        return None


class ArrowLayout(Layout):
    name, ordered = "arrow", True

    def iter_images(self):
        import datasets

        ds = datasets.load_from_disk(str(self.root / "data"))
        column = _image_column(ds.features, self.image_column)
        for start, batch in _arrow_batches(ds.with_format("arrow"), column):
            for i, value in enumerate(batch):
                yield f"data row {start + i}", None, value


class ParquetLayout(Layout):
    name, ordered = "parquet", True

    def iter_images(self):
        import pyarrow.parquet as pq

        for rel in self.files:
            pf = pq.ParquetFile(self.root / rel)
            column = _image_column(_parquet_features(pf), self.image_column, pf.schema_arrow.names)
            row = 0
            for batch in pf.iter_batches(columns=[column], batch_size=256):
                for value in _bytes_of(batch.column(0)):
                    yield f"{rel} row {row}", None, value
                    row += 1


class WebDatasetLayout(Layout):
    name = "webdataset"

    def iter_images(self):
        for rel in self.files:
            with tarfile.open(self.root / rel, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_key(member.name)
                    if key is None or not is_image_extension(ext):
                        continue
                    fh = tar.extractfile(member)
                    yield f"{rel}:{member.name}", key, fh.read() if fh else None

    def manifest_identity(self, key, source):
        return key


class ImageFolderLayout(Layout):
    name = "imagefolder"

    def iter_images(self):
        for rel in self.files:
            if rel.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
                yield rel, rel, (self.root / rel).read_bytes()

    def manifest_identity(self, key, source):
        # protect --format imagefolder writes <source relative path>.png
        if source and not os.path.isabs(source) and "://" not in source:
            return Path(source).with_suffix(".png").as_posix()
        return None


def detect_layout(directory: str | os.PathLike, image_column: str | None = None) -> Layout:
    """Which kind of protected folder this is, and its data files (relative, sorted)."""
    from ..sources.hf import is_saved_dataset

    root = Path(directory)
    if not root.is_dir():
        raise VerifyError(f"{root} is not a folder")
    record = read_record(root) or {}
    column = image_column or record.get("image_column") or "image"
    if (root / "data").is_dir() and is_saved_dataset(root / "data"):
        return ArrowLayout(root, ["data"], column)
    files = data_files(root)
    by_kind: dict[str, list[str]] = defaultdict(list)
    for rel in files:
        ext = rel.rsplit(".", 1)[-1].lower() if "." in rel.rsplit("/", 1)[-1] else ""
        if rel.lower().endswith(TAR_SUFFIXES):
            by_kind["webdataset"].append(rel)
        elif ext == "parquet":
            by_kind["parquet"].append(rel)
        elif ext in IMAGE_EXTENSIONS or rel.rsplit("/", 1)[-1] in ("metadata.jsonl", "metadata.csv"):
            by_kind["imagefolder"].append(rel)
    kinds = [k for k in ("webdataset", "parquet", "imagefolder") if by_kind[k]]
    if not kinds:
        raise VerifyError(f"{root} holds no protected data: no data/ save_to_disk folder, tar or Parquet "
                          "shards, or image files")
    if len(kinds) > 1:
        raise VerifyError(f"{root} mixes {' and '.join(kinds)} data files; verify one layout at a time")
    cls = {"webdataset": WebDatasetLayout, "parquet": ParquetLayout, "imagefolder": ImageFolderLayout}[kinds[0]]
    return cls(root, by_kind[kinds[0]], column)


def data_files(root: Path) -> list[str]:
    """Relative paths of the files that make up the dataset: everything except the card,
    manifests, job records, shard markers, errors, hidden and temporary files."""
    out = []
    for path in root.rglob("*"):
        if not path.is_file() or _hidden(path, root):
            continue
        rel = path.relative_to(root).as_posix()
        name = path.name
        if rel in _IGNORED_NAMES or name.endswith((".done.json", ".manifest.parquet")):
            continue
        out.append(rel)
    return sorted(out)


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


# --------------------------------------------------------------------- the verifier
def verify_directory(directory: str | os.PathLike, *, source: str | None = None,
                     source_split: str | None = None, image_column: str | None = None,
                     target: str | None = None) -> VerifyReport:
    """Verify a protected folder (see the module docstring); never raises for bad samples."""
    root = Path(directory)
    report = VerifyReport(target=target or str(root), layout=None, source=source)
    try:
        layout = detect_layout(root, image_column)
    except VerifyError as exc:
        report.problems.append(str(exc))
        return report
    report.layout = layout.name
    record = read_record(root)
    if record is None:
        report.problems.append(f"no job record ({' / '.join(RECORD_FILES)}): the budget and config are unknown")
    report.budget_levels, report.config_hash = record_budget(record)
    if record is not None and report.budget_levels is None:
        report.problems.append(f"the job record {record.get('_file')} has no config: the budget is unknown")
    manifest = load_manifest(root)
    if manifest is None:
        report.problems.append(f"no {MANIFEST_FILE}: nothing to verify the images against")
        return report
    rows = manifest.to_pylist()
    report.expected = len(rows)
    hashes = {r["config_hash"] for r in rows} - {None}
    if report.config_hash and hashes - {report.config_hash}:
        report.problems.append(f"manifest rows carry config hash(es) {sorted(hashes - {report.config_hash})}, "
                               f"the job record says {report.config_hash}")

    # pass 1: hash every image
    items: list[PublishedImage] = []
    unreadable: list[int] = []
    try:
        for position, (location, identity, data) in enumerate(layout.iter_images()):
            if data is None:
                unreadable.append(position)
                items.append(PublishedImage(location, identity, position, "", _alias(location)))
            else:
                items.append(PublishedImage(location, identity, position, hashlib.sha256(data).hexdigest(),
                                            _alias(location)))
    except Exception as exc:  # a truncated tar or a broken Parquet file: name it, don't crash
        report.problems.append(f"cannot read the {layout.name} data in {root}: {type(exc).__name__}: {exc}")
        return report
    report.found = len(items)

    pairs, altered, extra, missing = _match(items, rows, layout)

    # pass 2: fetch bytes of what must be decoded
    source_index = _SourceIndex(source, source_split) if source else None
    need_decode = set(altered) | set(extra)
    if source_index is not None:
        wanted = {rows[m]["source_sha256"] for m in list(pairs.values()) + list(altered.values())} - {None}
        source_index.load(wanted, want_pixels=bool(need_decode))
        need_decode |= {p for p, m in list(pairs.items()) + list(altered.items())
                        if rows[m]["source_sha256"] in source_index.bytes_by_sha}
    blobs = _fetch(layout, need_decode) if need_decode else {}

    source_shas = {r["source_sha256"]: r["key"] for r in rows if r["source_sha256"]}
    manifest_keys = {r["key"] for r in rows if r["key"]}
    budget = report.budget_levels
    for position in sorted(set(pairs) | set(altered) | set(extra)):
        item = items[position]
        bad = False
        if position in pairs:
            row = rows[pairs[position]]
            linf = row["linf"]
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
        elif position in altered:
            row = rows[altered[position]]
            detail = ("unreadable image entry" if position in unreadable else
                      f"SHA-256 {item.sha256[:12]}... differs from the manifest's {str(row['sha256'])[:12]}...")
            report.add("altered", row["key"], item.location, detail)
            bad = True
        else:
            row = None
            report.add("extra", None, item.location,
                       "unreadable image entry" if position in unreadable else
                       f"SHA-256 {item.sha256[:12]}... is in no manifest row")
            bad = True
        data = blobs.get(position)
        if position not in pairs:
            bad |= _check_unprotected(report, item, row, data, source_shas, manifest_keys, source_index)
        if source_index is not None and row is not None and data is not None:
            src = source_index.bytes_by_sha.get(row["source_sha256"])
            if src is None:
                report.source_unavailable += 1
            else:
                bad |= _check_against_source(report, item, row, data, src, budget, position in pairs)
        elif source_index is not None and row is not None and row["source_sha256"] is not None:
            report.source_unavailable += 1
        if position in pairs and not bad:
            report.verified += 1
    for m in missing:
        row = rows[m]
        where = layout.manifest_identity(row["key"], row["source"]) or row["source"]
        report.add("missing", row["key"], where, "in the manifest but not in the published data")
    return report


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
    """``shard.tar:dir/abc.png`` -> ``dir/abc.png`` (how a runner manifest may name a member)."""
    return location.split(":", 1)[1] if ":" in location and " row " not in location else None


def _check_unprotected(report: VerifyReport, item: PublishedImage, row: dict | None, data: bytes | None,
                       source_shas: dict[str, str], manifest_keys: set[str], source_index: "_SourceIndex | None",
                       ) -> bool:
    """Is an altered or extra image simply a source image (bytes or pixels)?"""
    key = row["key"] if row else None
    if item.sha256 in source_shas:
        report.add("unprotected", key or source_shas[item.sha256], item.location,
                   f"byte-identical to the source image of sample {source_shas[item.sha256]}")
        return True
    if data is None:
        return False
    pixel_hash = _pixel_hash(data)
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


def _fetch(layout: Layout, positions: set[int]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for position, (_, _, data) in enumerate(layout.iter_images()):
        if position in positions and data is not None:
            out[position] = data
    return out


# ------------------------------------------------------------------------ sources
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


def iter_source_images(source: str, split: str | None = None) -> Iterator[tuple[str, bytes]]:
    """(name, original bytes) of every image in a source: tar / Parquet shard folders, or
    anything :func:`udp_datasets.sources.open_source` opens (image folder, save_to_disk, Hub id)."""
    from ..sources.hf import is_saved_dataset

    path = Path(source).expanduser()
    if path.is_dir() and not is_saved_dataset(path):
        files = data_files(path)
        tars = [f for f in files if f.lower().endswith(TAR_SUFFIXES)]
        parquets = [f for f in files if f.endswith(".parquet")]
        if tars:
            yield from ((loc, data) for loc, _, data in WebDatasetLayout(path, tars).iter_images() if data)
            return
        if parquets and not any(f.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS for f in files):
            yield from ((loc, data) for loc, _, data in ParquetLayout(path, parquets).iter_images() if data)
            return
    from ..protector import raw_image_column
    from ..sources import open_source

    ds = open_source(source, split=split)
    column = _image_column(ds.features, "image")
    ds = raw_image_column(ds, column)
    for i, value in enumerate(ds[column]):
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                yield value.get("path") or f"row {i}", value["bytes"]
            elif value.get("path"):
                yield value["path"], Path(value["path"]).read_bytes()


# ------------------------------------------------------------------------ helpers
def _image_column(features: Any, preferred: str, names: Sequence[str] | None = None) -> str:
    """``preferred`` if present, else the (first) ``Image`` feature, else a bytes struct column."""
    import datasets

    features = features or {}
    if preferred in features or (names and preferred in names):
        return preferred
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise VerifyError(f"no image column {preferred!r} (columns: {list(features) or list(names or [])})")


def _parquet_features(pf: Any) -> Any:
    import datasets

    try:
        return datasets.Features.from_arrow_schema(pf.schema_arrow)
    except Exception:  # no or foreign metadata
        return None


def _bytes_of(column: Any) -> list[bytes | None]:
    """Image bytes from an Arrow column of ``{"bytes", "path"}`` structs (or plain binary)."""
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        values = column.field("bytes").to_pylist()
        paths = column.field("path").to_pylist() if column.type.get_field_index("path") >= 0 else [None] * len(values)
        return [v if v is not None else (_read(p) if p else None) for v, p in zip(values, paths)]
    return column.to_pylist()


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


def _arrow_batches(ds: Any, column: str, batch_size: int = 256) -> Iterator[tuple[int, list]]:
    start = 0
    for batch in ds.select_columns([column]).iter(batch_size=batch_size):
        values = _bytes_of(batch.column(0).combine_chunks() if hasattr(batch.column(0), "combine_chunks")
                           else batch.column(0))
        yield start, values
        start += len(values)


__all__ = ["CATEGORIES", "Finding", "VerifyError", "VerifyReport", "data_files", "detect_layout",
           "iter_source_images", "load_manifest", "read_record", "record_budget", "verify_directory"]

