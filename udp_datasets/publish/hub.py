"""Publish a protected dataset folder to the Hugging Face Hub, and verify published ones.

``publish(DIR, REPO_ID)`` does, in this order:

1. **Stage** exactly what will be uploaded into one folder: an Arrow output (``DIR/data``,
   ``save_to_disk``) is converted to Parquet shards ``data/train-0000i-of-0000N.parquet``
   with the ``Image`` feature kept in the schema metadata (what ``push_to_hub`` writes, so
   ``load_dataset`` gives an ``Image()`` column and the other columns unchanged); tar and
   Parquet shards and image folders are hard-linked as they are (copied across file
   systems). Shard markers (``*.done.json``), per-shard manifests, ``errors.jsonl``, hidden
   and temporary files (the shard job's ``.udp/`` bookkeeping) stay behind.
   ``manifest.parquet`` and the job record go along, always at the repo root and under the
   same names: the shard job's ``.udp/manifest.parquet`` and ``.udp/job.json`` are published as
   ``manifest.parquet`` and ``udp_protection.json``.
2. **Verify** the staged folder with :func:`udp_datasets.publish.verify.verify_directory`, i.e. the
   very bytes that will be uploaded (hard links keep the verified content even if DIR is
   rewritten by temp + rename meanwhile). Any finding refuses the publish with
   :class:`PublishRefused` *before any request is made*: nothing is created or uploaded.
3. **Render** the card (:mod:`udp_datasets.publish.card`) into ``README.md``.
4. **Upload** in one commit with ``HfApi.upload_folder``: ``create_repo(exist_ok=True)``,
   the branch created when ``revision`` names a new one, ``create_pr`` and
   ``commit_message`` passed through. Stale data files of an earlier publish (other shard
   counts) are deleted in the same commit, so the revision holds exactly what was verified.
   ``upload_folder`` skips LFS objects the Hub already has, so re-running an interrupted
   publish only sends what is missing.

Why not ``Dataset.push_to_hub``: it uploads shard by shard in several commits, cannot
carry the manifest and record in the same commit, and would re-encode nothing but also
verify nothing; staging gives one atomic, verified commit for every layout.

``verify(TARGET)`` takes a folder or ``REPO_ID[@revision]``. For the Hub it resolves the
revision to a commit, downloads that commit with ``snapshot_download`` into a fresh
temporary folder (never a warm cache that could hide a change on the server) and runs the
same local verifier on it.

Tokens: only ``huggingface_hub``'s own resolution is used (``HF_TOKEN``, the login cache,
or ``token=`` passed straight through). This module never reads, prints, logs or writes a
token; cards, manifests and records are built from the job's files only.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..records.names import MANIFEST_FILE, RECORD_FILE, RECORD_FILES
from ..sources.keys import IMAGE_EXTENSIONS, TAR_SUFFIXES
from .integrity import failed_shard_names
from .verify import (VerifyReport, find_manifest, load_manifest, protected_layout, read_record,
                     verify_directory)

logger = logging.getLogger(__name__)

REPO_TYPE = "dataset"
DEFAULT_MAX_SHARD_SIZE = "500MB"
# remote files that belong to the data: stale ones are deleted when a new version is published
DATA_FILE_PATTERNS = ["*.parquet", "*.arrow", *(f"*{s}" for s in TAR_SUFFIXES), "metadata.jsonl",
                      "metadata.csv", *(f"*.{e}" for e in sorted(IMAGE_EXTENSIONS))]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class PublishError(RuntimeError):
    """Publishing cannot go ahead (not a protected folder, a public repo asked to be private)."""


class PublishIncomplete(PublishError):
    """The job record lists failed shards: publishing would leave their samples out silently."""


class PublishRefused(PublishError):
    """The verifier found problems; nothing was uploaded. ``report`` says which samples."""

    def __init__(self, report: VerifyReport):
        self.report = report
        counts = ", ".join(f"{len(v)} {k}" for k, v in report.findings.items() if v)
        problems = "; ".join(report.problems)
        super().__init__("refusing to publish: verification failed ("
                         + "; ".join(x for x in (counts, problems) if x) + "); nothing was uploaded")


@dataclass
class StagedDataset:
    """A folder holding exactly what will be uploaded, and how to describe it in the card."""

    root: Path
    layout: str
    data_patterns: list[str]
    files: list[str]
    split: str = "train"
    features: Any = None
    num_bytes: int | None = None
    extra_files: list[str] = field(default_factory=list)


@dataclass
class PublishResult:
    repo_id: str
    revision: str | None
    commit: str | None
    commit_url: str | None
    pr_url: str | None
    url: str
    files: list[str]
    report: VerifyReport

    def to_dict(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "revision": self.revision, "commit": self.commit,
                "commit_url": self.commit_url, "pr_url": self.pr_url, "url": self.url, "files": self.files,
                "verified": self.report.verified}


# ------------------------------------------------------------------------- staging
def stage(directory: str | os.PathLike, staging: str | os.PathLike, *,
          max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> StagedDataset:
    """Put into ``staging`` exactly the files to upload (see the module docstring)."""
    src, out = Path(directory), Path(staging)
    if not src.is_dir():
        raise PublishError(f"{src} is not a folder")
    record = read_record(src) or {}
    layout = protected_layout(src)
    out.mkdir(parents=True, exist_ok=True)
    split = _split_name(record.get("split"))
    staged = StagedDataset(root=out, layout=layout.name, data_patterns=[], files=[], split=split)
    if layout.name == "arrow":
        _stage_arrow(src / "data", out, layout.image_column, split, max_shard_size, staged)
    else:
        for rel in layout.files:
            _link(src / rel, out / rel)
        staged.files = list(layout.files)
        staged.data_patterns = data_patterns(layout.files, exclude=[MANIFEST_FILE])
    # manifest and record always land at the repo root under one name, whichever job wrote them
    manifest_path = find_manifest(src)
    if manifest_path is not None:
        shutil.copy2(manifest_path, out / MANIFEST_FILE)
        staged.extra_files.append(MANIFEST_FILE)
    else:
        try:
            manifest = load_manifest(src)  # the shard job's per-shard manifests, not merged yet
        except Exception:  # unreadable: the verifier names the problem and the publish is refused
            manifest = None
        if manifest is not None:
            from ..records.manifest import write_manifest

            write_manifest([manifest], out / MANIFEST_FILE)
            staged.extra_files.append(MANIFEST_FILE)
    record_name = record.get("_file")  # the first of RECORD_FILES found
    if record_name is not None:
        shutil.copy2(src / record_name, out / RECORD_FILE)
        staged.extra_files.append(RECORD_FILE)
    return staged


def _stage_arrow(data_dir: Path, out: Path, image_column: str, split: str, max_shard_size: int | str,
                 staged: StagedDataset) -> None:
    import datasets
    from datasets.utils.py_utils import convert_file_size_to_int

    ds = datasets.load_from_disk(str(data_dir))
    if isinstance(ds, datasets.DatasetDict):
        raise PublishError(f"{data_dir} holds several splits; publish one protected split per folder")
    feature = ds.features.get(image_column)
    if isinstance(feature, datasets.Image) and not feature.decode:
        ds = ds.cast_column(image_column, datasets.Image())
    nbytes = ds.data.nbytes
    num_shards = max(1, int(nbytes / convert_file_size_to_int(max_shard_size)) + 1)
    num_shards = min(num_shards, max(len(ds), 1))
    (out / "data").mkdir(parents=True, exist_ok=True)
    for i in range(num_shards):
        rel = f"data/{split}-{i:05d}-of-{num_shards:05d}.parquet"
        ds.shard(num_shards=num_shards, index=i, contiguous=True).to_parquet(str(out / rel))
        staged.files.append(rel)
    staged.data_patterns = [f"data/{split}-*"]
    staged.features = ds.features
    staged.num_bytes = nbytes
    staged.layout = "parquet"  # what the Hub will hold


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def _split_name(split: Any) -> str:
    if isinstance(split, str) and re.fullmatch(r"\w+", split):
        return split
    return "train"


def data_patterns(files: list[str], exclude: list[str] = ()) -> list[str]:
    """Short ``data_files`` patterns that match exactly ``files`` and none of ``exclude``.

    One ``dir/PREFIX*.ext`` pattern per folder and extension (PREFIX = the names' common
    prefix), falling back to the explicit names when a pattern would also catch another
    file (the manifest is a ``.parquet`` too). ``*`` never crosses a ``/``, as in
    ``datasets``' glob resolution.
    """
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for rel in files:
        folder, name = posixpath.split(rel)
        groups[(folder, _extension(name))].append(name)
    others = defaultdict(list)
    for rel in exclude:
        folder, name = posixpath.split(rel)
        others[folder].append(name)
    patterns: list[str] = []
    for (folder, ext), names in sorted(groups.items()):
        if names in (["metadata.jsonl"], ["metadata.csv"]):
            patterns.append(posixpath.join(folder, names[0]))
            continue
        prefix = os.path.commonprefix(names)
        pattern = f"{prefix}*{ext}" if len(names) > 1 else names[0]
        if len(names) > 1 and any(fnmatch.fnmatchcase(o, pattern) for o in others[folder] + _siblings(
                files, folder, names)):
            patterns.extend(posixpath.join(folder, n) for n in names)
        else:
            patterns.append(posixpath.join(folder, pattern))
    return patterns


def _extension(name: str) -> str:
    lower = name.lower()
    for suffix in TAR_SUFFIXES:
        if lower.endswith(suffix):
            return name[-len(suffix):]
    return name[name.rfind("."):] if "." in name else ""


def _siblings(files: list[str], folder: str, names: list[str]) -> list[str]:
    chosen = set(names)
    return [posixpath.basename(f) for f in files
            if posixpath.dirname(f) == folder and posixpath.basename(f) not in chosen]


# ------------------------------------------------------------------------- publish
def publish(directory: str | os.PathLike, repo_id: str, *, private: bool = False, revision: str | None = None,
            commit_message: str | None = None, create_pr: bool = False, source: str | None = None,
            source_split: str | None = None, license: str | None = None, pretty_name: str | None = None,
            eval_report: dict[str, Any] | str | os.PathLike | None = None, token: str | bool | None = None,
            max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
            staging_dir: str | os.PathLike | None = None, allow_failed_shards: bool = False,
            sign_key: bytes | None = None) -> PublishResult:
    """Verify a protected folder and push it to ``repo_id`` (a dataset repo) in one commit.

    Raises :class:`PublishRefused` (nothing uploaded) when verification fails. ``source``
    also measures L-inf against the clean source before publishing. ``token=None`` uses
    ``HF_TOKEN`` or the login cache. ``eval_report``: a dict, or the path of an
    ``udp-datasets evaluate`` ``report.json`` (or a Markdown file) for the card. A job whose record
    lists failed shards is refused (:class:`PublishIncomplete`) unless ``allow_failed_shards``; the
    card then names every missing shard and why it failed. ``sign_key``: the record's signature
    must hold under it (``--sign-key``).
    """
    from .card import load_eval_report, render_card

    if repo_id_problem(repo_id):
        raise PublishError(f"{repo_id!r} is not a repo id like 'namespace/name': {repo_id_problem(repo_id)}")
    if eval_report is not None and not isinstance(eval_report, dict):
        eval_report = load_eval_report(eval_report)
    directory = Path(directory)
    failed = (read_record(directory) or {}).get("shards_failed") if directory.is_dir() else None
    if failed and not allow_failed_shards:
        names = failed_shard_names(failed)
        raise PublishIncomplete(f"refusing to publish {directory}: its job has {len(failed)} failed shard(s) ({names}) "
                                "whose samples are missing; run the protect command again to redo them, or pass "
                                "--allow-failed-shards to publish without them (the card then lists them)")
    with _staging_folder(staging_dir) as folder:
        staged = stage(directory, folder, max_shard_size=max_shard_size)
        report = verify_directory(folder, source=source, source_split=source_split,
                                  target=f"{directory} (staged for {repo_id})", sign_key=sign_key,
                                  allow_failed_shards=allow_failed_shards)
        if not report.ok:
            raise PublishRefused(report)
        record = read_record(folder)
        manifest = load_manifest(folder)
        card = render_card(record, manifest, repo_id=repo_id, layout=staged.layout, data_files=staged.data_patterns,
                           revision=revision, license=license, pretty_name=pretty_name, eval_report=eval_report,
                           features=staged.features, split=staged.split, num_bytes=staged.num_bytes,
                           extra_files=staged.extra_files)
        card.save(str(folder / "README.md"))
        logger.info("verified %d images in %s; uploading to %s", report.verified, directory, repo_id)
        info, url = _upload(folder, repo_id, private=private, revision=revision, create_pr=create_pr,
                            commit_message=commit_message or _default_message(report, record), token=token)
        files = sorted(["README.md", *staged.files, *staged.extra_files])
    return PublishResult(repo_id=repo_id, revision=revision, commit=getattr(info, "oid", None),
                         commit_url=getattr(info, "commit_url", None), pr_url=getattr(info, "pr_url", None),
                         url=url, files=files, report=report)


def _upload(folder: Path, repo_id: str, *, private: bool, revision: str | None, create_pr: bool,
            commit_message: str, token: str | bool | None) -> tuple[Any, str]:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = str(api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True))
    if private and not api.repo_info(repo_id, repo_type=REPO_TYPE).private:
        raise PublishError(f"{repo_id} already exists and is public; make it private on the Hub first, or "
                           "publish without --private")
    if revision and revision != "main" and not revision.startswith("refs/"):
        from huggingface_hub.errors import HfHubHTTPError

        try:
            api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
        except HfHubHTTPError as exc:  # an existing branch answers 409 on some servers
            if getattr(exc.response, "status_code", None) != 409:
                raise
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=REPO_TYPE, revision=revision,
                             commit_message=commit_message, create_pr=create_pr,
                             delete_patterns=DATA_FILE_PATTERNS + [MANIFEST_FILE, *RECORD_FILES])
    return info, url


def _default_message(report: VerifyReport, record: dict | None) -> str:
    budget = f", budget {report.budget_levels}/255" if report.budget_levels is not None else ""
    config = f", config {report.config_hash}" if report.config_hash else ""
    return f"Publish {report.verified} UDP-protected images{budget}{config}"


@contextlib.contextmanager
def _staging_folder(parent: str | os.PathLike | None) -> Iterator[Path]:
    if parent is not None:
        Path(parent).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="udp-publish-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -------------------------------------------------------------------------- verify
def parse_target(target: str) -> tuple[str, str | None]:
    """``ns/name@rev`` -> (``ns/name``, ``rev``); the revision may contain slashes."""
    repo_id, at, revision = target.partition("@")
    return repo_id, (revision or None) if at else None


def is_repo_id(text: str) -> bool:
    return bool(_REPO_ID.match(parse_target(text)[0]))


def repo_id_problem(repo_id: str) -> str | None:
    """Why a ``namespace/name`` is not a Hub repo id (the Hub's own rules: no ``..`` or ``--``, no
    name that starts or ends with ``.`` or ``-``, at most 96 characters), or None."""
    if not _REPO_ID.match(repo_id):
        return "a Hub id is namespace/name"
    if ".." in repo_id or "--" in repo_id:
        return "a Hub id may not contain '..' or '--'"
    if any(part.startswith((".", "-")) or part.endswith((".", "-")) for part in repo_id.split("/")):
        return "a Hub id's parts may not start or end with '.' or '-'"
    if len(repo_id) > 96:
        return "a Hub id is at most 96 characters"
    return None


def verify_remote(repo_id: str, revision: str | None = None, *, source: str | None = None,
                  source_split: str | None = None, token: str | bool | None = None,
                  download_dir: str | os.PathLike | None = None, sign_key: bytes | None = None,
                  allow_failed_shards: bool = False) -> VerifyReport:
    """Download one commit of a published dataset into a fresh folder and verify it."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(token=token)
    commit = api.dataset_info(repo_id, revision=revision).sha
    with _staging_folder(download_dir) as folder:
        local = snapshot_download(repo_id, repo_type=REPO_TYPE, revision=commit or revision,
                                  local_dir=str(folder / "snapshot"), token=token)
        report = verify_directory(local, source=source, source_split=source_split,
                                  target=repo_id + (f"@{revision}" if revision else ""), sign_key=sign_key,
                                  allow_failed_shards=allow_failed_shards)
    report.commit = commit
    return report


def verify(target: str | os.PathLike, *, source: str | None = None, source_split: str | None = None,
           token: str | bool | None = None, image_column: str | None = None,
           sign_key: bytes | None = None, allow_failed_shards: bool = False) -> VerifyReport:
    """Verify a local protected folder, or a Hub dataset ``REPO_ID[@revision]``."""
    path = Path(target).expanduser()
    if path.exists():
        if not path.is_dir():
            raise PublishError(f"{path} is a file; give the protected output folder or a Hub dataset id")
        return verify_directory(path, source=source, source_split=source_split, image_column=image_column,
                                sign_key=sign_key, allow_failed_shards=allow_failed_shards)
    text = str(target)
    if not is_repo_id(text):
        raise PublishError(f"{text} is neither an existing folder nor a Hub dataset id (namespace/name[@revision])")
    repo_id, revision = parse_target(text)
    problem = repo_id_problem(repo_id)
    if problem:
        raise PublishError(f"{text} is neither an existing folder nor a valid Hub dataset id: {problem}")
    return verify_remote(repo_id, revision, source=source, source_split=source_split, token=token,
                         sign_key=sign_key, allow_failed_shards=allow_failed_shards)
