"""A local, offline, Hugging Face Hub-compatible HTTP server for tests.

``LocalHub`` runs a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` (free port) and speaks
enough of the Hub's HTTP API for the *real* ``huggingface_hub`` and ``datasets`` clients:

* repos: ``POST /api/repos/create`` (private / exist_ok), ``DELETE /api/repos/delete``,
  ``GET /api/{type}s/{ns}/{name}[/revision/{rev}]`` (``sha``, ``private``, ``siblings``,
  ``cardData`` parsed from the README's YAML), ``GET /api/whoami-v2``,
  ``POST /api/validate-yaml``;
* refs: ``POST|DELETE /api/{type}s/{id}/branch/{branch}``, ``POST .../tag/{rev}``,
  ``GET .../refs``; revisions may be branches (slashes allowed, percent-encoded or not),
  tags, full commit ids or ``refs/pr/N``;
* listing: ``GET .../tree/{rev}[/{path}]`` (``recursive``, ``expand`` -> ``lastCommit``),
  ``POST .../paths-info/{rev}`` (form or JSON), ``GET .../commits/{rev}``;
* uploads: ``POST .../preupload/{rev}`` -> ``POST /{prefix}{id}.git/info/lfs/objects/batch``
  -> ``PUT /_lfs/upload/{oid}`` (sha256 checked) -> ``POST .../info/lfs/objects/verify``,
  then the NDJSON ``POST .../commit/{rev}`` (``header``, ``file`` base64/utf-8, ``lfsFile``,
  ``deletedFile``, ``deletedFolder``; ``parentCommit`` mismatch -> 412).
  ``create_pr=1`` is supported: the commit lands on a new ``refs/pr/N`` ref;
* downloads: ``HEAD|GET /{prefix}{id}/resolve/{rev}/{path}`` with ``ETag`` (git blob sha1,
  or sha256 for LFS files), ``X-Repo-Commit``, ``Content-Length``, ``Range`` (206/416),
  and ``X-Error-Code`` ``RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound`` on 404.

A file is stored as LFS when its extension is binary-ish (``LFS_SUFFIXES``), its sample
contains a NUL byte, or its size is >= ``lfs_threshold`` (default 10 MiB). Storage is
on disk and git-less: ``<root>/objects/<sha256>`` holds contents, ``<root>/repos/<type>/
<ns>/<name>/repo.json`` holds branches, tags and commits (each with its full file table).
New repos get an initial commit with a ``.gitattributes``, like the real Hub.

Auth: every write needs ``Authorization: Bearer <token>`` (else 401); private repos answer
401 + ``RepoNotFound`` to anonymous reads. ``LocalHub(accepted_tokens={...})`` also rejects
other tokens. Header values are only kept in memory (``hub.requests``), never on disk, and
each record says whether the bearer token appeared in the response (``auth_echoed``).

Not implemented (answered 404, listed in ``hub.unhandled``): Xet storage (run clients with
``HF_HUB_DISABLE_XET=1``), multipart LFS, discussions/PR comments, ``/parquet`` and other
dataset-viewer routes, super-squash, ``lfs-files``, spaces runtime, pagination (single page),
repo ids without a namespace.

Usage from a test (``HF_ENDPOINT`` is read at import time, so clients run in a subprocess)::

    from hub_server import LocalHub, run_client   # tests/ is on sys.path under pytest

    def test_x(tmp_path):
        with LocalHub() as hub:
            run_client(hub, "from huggingface_hub import HfApi; HfApi().create_repo("
                            "'test-user/x', repo_type='dataset')", tmp_path)
            assert hub.list_files("test-user/x") == [".gitattributes"]

``run_client(hub, code, tmp_path, *, token=None, extra_env=None, timeout=120, check=True)``
runs ``code`` with ``sys.executable`` and ``HF_ENDPOINT=hub.url``, ``HF_HUB_DISABLE_XET=1``,
``HF_TOKEN=hub.token`` (a random ``hf_dummy_test_token_...``; ``token=False`` sends none),
``HF_HOME``/``HF_DATASETS_CACHE`` under ``tmp_path`` (another ``tmp_path`` = a cold cache),
``HF_HUB_OFFLINE=0`` (overriding tests/conftest.py), the repo root on ``PYTHONPATH``, and a
guard that refuses to resolve any non-loopback host. ``client_env()`` gives that environment.
Test-side helpers: ``list_files``, ``read_file``, ``is_lfs``, ``commit_count``, ``head``,
``is_private``, ``tamper``, ``requests``/``authorized_requests()``/``clear_requests()``,
``unhandled``. The default user/namespace is ``test-user``.

A module-scoped ``local_hub`` fixture lives here too; enable it in a test module with
``from hub_server import local_hub  # noqa: F401`` or ``pytest_plugins = ["hub_server"]``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import parse_qs, unquote, urlsplit

USER = "test-user"
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
LFS_SUFFIXES = (".parquet", ".arrow", ".tar", ".gz", ".zip", ".zst", ".png", ".jpg", ".jpeg", ".gif",
                ".webp", ".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".npy", ".npz", ".pkl",
                ".h5", ".onnx", ".wav", ".mp3", ".mp4")
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode()
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class HubError(Exception):
    """An HTTP error answered as JSON ``{"error": message}`` (+ ``X-Error-Code`` if given)."""

    def __init__(self, status: int, message: str, code: Optional[str] = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class RequestRecord:
    method: str
    path: str
    headers: dict[str, str]  # header names lower-cased
    status: int = 0
    auth_echoed: bool = False  # True if the request's bearer token appeared in the response


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _yaml_front_matter(text: str) -> Optional[dict]:
    """The README's YAML metadata block as a dict (None if absent); raises ValueError if invalid."""
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return None
    import yaml  # PyYAML ships with datasets / huggingface_hub

    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise ValueError(f"Invalid YAML in README.md: {e}") from e
    if data is not None and not isinstance(data, dict):
        raise ValueError("README.md metadata must be a YAML mapping")
    return data or {}


class _Store:
    """On-disk repos (JSON) and content-addressed objects (sha256). Thread-safe via one lock."""

    def __init__(self, root: Path, lfs_threshold: int) -> None:
        self.root, self.lfs_threshold = root, lfs_threshold
        self.lock = threading.RLock()
        (root / "objects").mkdir(parents=True, exist_ok=True)
        (root / "repos").mkdir(parents=True, exist_ok=True)

    # objects ---------------------------------------------------------------------------
    def put(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        path = self.root / "objects" / sha
        if not path.exists():
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return sha

    def get(self, sha256: str) -> bytes:
        return (self.root / "objects" / sha256).read_bytes()

    def has(self, sha256: str, size: Optional[int] = None) -> bool:
        path = self.root / "objects" / sha256
        return path.is_file() and (size is None or path.stat().st_size == size)

    # repos -------------------------------------------------------------------------------
    def _file(self, rtype: str, repo_id: str) -> Path:
        return self.root / "repos" / rtype / repo_id / "repo.json"

    def load(self, rtype: str, repo_id: str) -> dict:
        path = self._file(rtype, repo_id)
        if not path.is_file():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def save(self, repo: dict) -> None:
        path = self._file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(repo, indent=1, sort_keys=True))
        os.replace(tmp, path)

    def exists(self, rtype: str, repo_id: str) -> bool:
        return self._file(rtype, repo_id).is_file()

    def delete(self, rtype: str, repo_id: str) -> None:
        shutil.rmtree(self._file(rtype, repo_id).parent)

    def entry(self, data: bytes, lfs: bool) -> dict:
        sha = self.put(data)
        oid = git_blob_oid(_pointer(sha, len(data))) if lfs else git_blob_oid(data)
        return {"sha256": sha, "size": len(data), "oid": oid, "lfs": lfs}

    def is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        return size >= self.lfs_threshold or path.lower().endswith(LFS_SUFFIXES) or b"\0" in sample

    def create(self, rtype: str, repo_id: str, private: bool) -> dict:
        repo = {"type": rtype, "id": repo_id, "private": private, "createdAt": _now(),
                "branches": {}, "tags": {}, "commits": {}, "prs": 0}
        files = {".gitattributes": self.entry(GITATTRIBUTES, lfs=False)}
        self.add_commit(repo, "main", None, files, "initial commit", "")
        return repo

    @staticmethod
    def add_commit(repo: dict, branch: str, parent: Optional[str], files: dict, title: str,
                   message: str) -> str:
        seed = json.dumps([parent, files, title, time.time_ns(), secrets.token_hex(4)], sort_keys=True)
        cid = hashlib.sha1(seed.encode()).hexdigest()
        repo["commits"][cid] = {"id": cid, "parents": [parent] if parent else [], "title": title,
                                "message": message, "date": _now(), "files": files}
        repo["branches"][branch] = cid
        return cid


def resolve_rev(repo: dict, rev: str) -> str:
    """Branch, tag or full commit id -> commit id (404 RevisionNotFound otherwise)."""
    if rev in repo["branches"]:
        return repo["branches"][rev]
    if rev in repo["tags"]:
        return repo["tags"][rev]
    if COMMIT_RE.match(rev) and rev in repo["commits"]:
        return rev
    raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


def _split_rev(repo: dict, segs: list[str]) -> tuple[str, list[str]]:
    """Split raw URL segments into (revision, rest): ``refs%2Fpr%2F1`` and ``refs/pr/1`` both work."""
    for i in range(1, len(segs) + 1):
        cand = "/".join(unquote(s) for s in segs[:i])
        if cand in repo["branches"] or cand in repo["tags"] or cand in repo["commits"]:
            return cand, segs[i:]
    return (unquote(segs[0]) if segs else "main"), segs[1:]


def _tree_entry(path: str, e: dict) -> dict:
    out: dict[str, Any] = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
    if e["lfs"]:
        out["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": len(_pointer(e["sha256"], e["size"]))}
    return out


def _dir_entry(files: dict, path: str) -> dict:
    sig = json.dumps(sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/")))
    return {"type": "directory", "oid": hashlib.sha1(sig.encode()).hexdigest(), "size": 0, "path": path}


def _signature(files: dict, path: str) -> Any:
    if path in files:
        return files[path]["oid"]
    return sorted((p, e["oid"]) for p, e in files.items() if p.startswith(path + "/"))


def _last_commit(repo: dict, cid: str, path: str) -> dict:
    commits = repo["commits"]
    sig = _signature(commits[cid]["files"], path)
    while commits[cid]["parents"] and _signature(commits[commits[cid]["parents"][0]]["files"], path) == sig:
        cid = commits[cid]["parents"][0]
    c = commits[cid]
    return {"id": cid, "title": c["title"], "date": c["date"]}


def _listing(files: dict, path: str, recursive: bool) -> list[dict]:
    prefix = path + "/" if path else ""
    items: dict[str, dict] = {}
    for p, e in files.items():
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix):].split("/")
        ndirs = len(parts) - 1 if recursive else min(1, len(parts) - 1)
        for i in range(1, ndirs + 1):
            d = prefix + "/".join(parts[:i])
            items.setdefault(d, _dir_entry(files, d))
        if recursive or len(parts) == 1:
            items[p] = _tree_entry(p, e)
    if path and not items:
        raise HubError(404, f"{path} does not exist on this revision", "EntryNotFound")
    return [items[k] for k in sorted(items)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # plumbing ---------------------------------------------------------------------------
    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        rec = RequestRecord(method, self.path, {k.lower(): v for k, v in self.headers.items()})
        with hub._log_lock:
            hub.requests.append(rec)
        auth = self.headers.get("Authorization", "")
        self.token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        self.body = self._read_body()
        split = urlsplit(self.path)
        self.query = parse_qs(split.query)
        self.extra_headers: dict[str, str] = {}
        try:
            status, payload = self._route(method, [s for s in split.path.split("/")[1:]])
        except HubError as e:
            status, payload = e.status, {"error": e.message, **e.extra}
            if e.code:
                self.extra_headers["X-Error-Code"] = e.code
            self.extra_headers["X-Error-Message"] = e.message
        except Exception as e:  # a bug in this server: make it visible to the test
            status, payload = 500, {"error": f"{type(e).__name__}: {e}"}
        if isinstance(payload, (dict, list)):
            body = json.dumps(payload).encode()
            self.extra_headers.setdefault("Content-Type", "application/json")
        else:
            body = payload
        head = "".join(f"{k}: {v}\n" for k, v in self.extra_headers.items())
        rec.status = status
        rec.auth_echoed = bool(self.token) and (self.token.encode() in body or self.token in head)
        self.send_response(status)
        for k, v in self.extra_headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", self.extra_headers.get("Content-Length", str(len(body))))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _json(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as e:
            raise HubError(400, f"Invalid JSON body: {e}") from e

    def _repo(self, rtype: str, repo_id: str, write: bool = False) -> dict:
        hub = self.server.hub
        if hub.accepted_tokens is not None and self.token is not None and self.token not in hub.accepted_tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        if write and not self.token:
            raise HubError(401, "You must be authenticated to write to a repository", "RepoNotFound")
        repo = hub.store.load(rtype, repo_id)
        if repo["private"] and not self.token:
            raise HubError(401, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    # routing ----------------------------------------------------------------------------
    def _route(self, method: str, segs: list[str]) -> tuple[int, Any]:
        store = self.server.hub.store
        if segs[:1] == ["api"]:
            rest = segs[1:]
            if rest == ["whoami-v2"]:
                if not self.token:
                    raise HubError(401, "Invalid username or password.")
                return 200, {"type": "user", "name": USER, "fullname": USER, "orgs": [],
                             "auth": {"type": "access_token", "accessToken": {"role": "write"}}}
            if rest == ["validate-yaml"] and method == "POST":
                try:
                    _yaml_front_matter(str(self._json().get("content", "")))
                except ValueError as e:
                    return 400, {"errors": [{"message": str(e)}], "warnings": []}
                return 200, {"errors": [], "warnings": []}
            if rest[:1] == ["repos"] and rest[1:] in (["create"], ["delete"]):
                return self._repos(rest[1], self._json())
            if len(rest) >= 3 and rest[0] in API_TYPES:
                rtype, repo_id = API_TYPES[rest[0]], f"{unquote(rest[1])}/{unquote(rest[2])}"
                return self._api_repo(method, rtype, repo_id, rest[3:])
        elif len(segs) == 3 and segs[:2] == ["_lfs", "upload"] and method == "PUT":
            oid = segs[2]
            if hashlib.sha256(self.body).hexdigest() != oid:
                raise HubError(400, "sha256 of the uploaded content does not match the oid")
            store.put(self.body)
            return 200, b""
        else:
            rtype = {"datasets": "dataset", "spaces": "space"}.get(segs[0] if segs else "", "model")
            rest = segs[1:] if rtype != "model" else segs
            if len(rest) >= 3 and rest[1].endswith(".git") and rest[2:5] == ["info", "lfs", "objects"]:
                return self._lfs(rtype, f"{unquote(rest[0])}/{unquote(rest[1][:-4])}", rest[5:])
            if len(rest) >= 4 and rest[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(rtype, f"{unquote(rest[0])}/{unquote(rest[1])}", rest[3:])
        return self._unhandled(method)

    def _unhandled(self, method: str) -> tuple[int, Any]:
        with self.server.hub._log_lock:
            self.server.hub.unhandled.append(f"{method} {self.path}")
        raise HubError(404, f"Not implemented by the local hub: {method} {urlsplit(self.path).path}")

    def _repos(self, action: str, body: dict) -> tuple[int, Any]:
        hub = self.server.hub
        if not self.token:
            raise HubError(401, "You must be authenticated to create or delete a repository")
        rtype = body.get("type") or "model"
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        with hub.store.lock:
            if action == "delete":
                self._repo(rtype, repo_id, write=True)
                hub.store.delete(rtype, repo_id)
                return 200, {}
            url = f"{hub.url}/{URL_PREFIX[rtype]}{repo_id}"
            if hub.store.exists(rtype, repo_id):
                raise HubError(409, f"You already created this {rtype} repo", url=url)
            private = body.get("visibility") == "private" or bool(body.get("private"))
            hub.store.save(hub.store.create(rtype, repo_id, private))
        return 200, {"url": url, "name": repo_id}

    def _api_repo(self, method: str, rtype: str, repo_id: str, rest: list[str]) -> tuple[int, Any]:
        store = self.server.hub.store
        action = rest[0] if rest else ""
        write = method in ("POST", "PUT", "DELETE") and action not in ("paths-info",)
        with store.lock:
            repo = self._repo(rtype, repo_id, write=write)
            if method == "GET" and action in ("", "revision"):
                rev, _ = _split_rev(repo, rest[1:]) if rest else ("main", [])
                return 200, self._info(repo, resolve_rev(repo, rev))
            if method == "GET" and action == "tree":
                rev, path = _split_rev(repo, rest[1:])
                cid = resolve_rev(repo, rev)
                entries = _listing(repo["commits"][cid]["files"], "/".join(unquote(p) for p in path).strip("/"),
                                   self.query.get("recursive", ["false"])[0].lower() in ("1", "true"))
                if self.query.get("expand", ["false"])[0].lower() in ("1", "true"):
                    for e in entries:
                        e["lastCommit"] = _last_commit(repo, cid, e["path"])
                return 200, entries
            if method == "POST" and action == "paths-info":
                return 200, self._paths_info(repo, rest[1:])
            if method == "GET" and action == "commits":
                return 200, self._commits(repo, resolve_rev(repo, _split_rev(repo, rest[1:])[0]))
            if method == "GET" and action == "refs":
                return 200, self._refs(repo)
            if method == "POST" and action == "preupload":
                return 200, self._preupload(repo, _split_rev(repo, rest[1:])[0])
            if method == "POST" and action == "commit":
                return 200, self._commit(repo, _split_rev(repo, rest[1:])[0])
            if action == "branch" and method in ("POST", "DELETE") and len(rest) > 1:
                branch = "/".join(unquote(s) for s in rest[1:])
                if method == "DELETE":
                    if branch not in repo["branches"] or branch == "main":
                        raise HubError(404 if branch != "main" else 403, f"Cannot delete branch {branch}",
                                       "RevisionNotFound" if branch != "main" else None)
                    del repo["branches"][branch]
                else:
                    if branch in repo["branches"]:
                        raise HubError(409, f"Branch {branch} already exists")
                    repo["branches"][branch] = resolve_rev(repo, self._json().get("startingPoint") or "main")
                store.save(repo)
                return 200, {}
            if action == "tag" and method == "POST":
                body = self._json()
                if body.get("tag") in repo["tags"]:
                    raise HubError(409, f"Tag {body['tag']} already exists")
                repo["tags"][body["tag"]] = resolve_rev(repo, _split_rev(repo, rest[1:])[0])
                store.save(repo)
                return 200, {}
        return self._unhandled(method)

    def _info(self, repo: dict, cid: str) -> dict:
        commit = repo["commits"][cid]
        files = commit["files"]
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = []
        for p in sorted(files):
            s: dict[str, Any] = {"rfilename": p}
            if blobs:
                e = files[p]
                s.update(size=e["size"], blobId=e["oid"])
                if e["lfs"]:
                    s["lfs"] = {"sha256": e["sha256"], "size": e["size"],
                                "pointerSize": len(_pointer(e["sha256"], e["size"]))}
            siblings.append(s)
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"],
            "author": repo["id"].split("/")[0], "sha": cid, "private": repo["private"],
            "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
            "createdAt": repo["createdAt"], "lastModified": commit["date"], "siblings": siblings,
            "usedStorage": sum(e["size"] for e in files.values()),
        }
        if repo["type"] == "model":
            info["modelId"] = repo["id"]
        if "README.md" in files:
            try:
                card = _yaml_front_matter(self._content(files["README.md"]).decode("utf-8", "replace"))
            except ValueError:
                card = None
            if card is not None:
                info["cardData"] = card
        return info

    def _content(self, entry: dict) -> bytes:
        return self.server.hub.store.get(entry.get("served", entry["sha256"]))

    def _paths_info(self, repo: dict, rest: list[str]) -> list[dict]:
        cid = resolve_rev(repo, _split_rev(repo, rest)[0])
        if "json" in (self.headers.get("Content-Type") or ""):
            form = self._json()
            paths, expand = form.get("paths", []), bool(form.get("expand"))
        else:
            form = parse_qs(self.body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["false"])[0].lower() in ("1", "true")
        files, out = repo["commits"][cid]["files"], []
        for p in ([paths] if isinstance(paths, str) else paths):
            p = p.strip("/")
            if p in files:
                item = _tree_entry(p, files[p])
            elif any(f.startswith(p + "/") for f in files):
                item = _dir_entry(files, p)
            else:
                continue
            if expand:
                item["lastCommit"] = _last_commit(repo, cid, p)
            out.append(item)
        return out

    def _commits(self, repo: dict, cid: Optional[str]) -> list[dict]:
        out = []
        formatted = "formatted" in self.query.get("expand[]", [])
        while cid:
            c = repo["commits"][cid]
            item = {"id": cid, "title": c["title"], "message": c["message"], "date": c["date"],
                    "authors": [{"user": USER, "avatar": ""}]}
            if formatted:
                item["formatted"] = {"title": c["title"], "message": c["message"]}
            out.append(item)
            cid = c["parents"][0] if c["parents"] else None
        return out

    def _refs(self, repo: dict) -> dict:
        def ref(name: str, full: str, target: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": target}

        branches = [ref(b, f"refs/heads/{b}", c) for b, c in repo["branches"].items() if not b.startswith("refs/")]
        prs = [ref(b, b, c) for b, c in repo["branches"].items() if b.startswith("refs/pr/")]
        return {"branches": branches, "tags": [ref(t, f"refs/tags/{t}", c) for t, c in repo["tags"].items()],
                "converts": [], "pullRequests": prs}

    def _preupload(self, repo: dict, rev: str) -> dict:
        cid = resolve_rev(repo, rev)
        files, out = repo["commits"][cid]["files"], []
        for f in self._json().get("files", []):
            lfs = self.server.hub.store.is_lfs(f["path"], int(f["size"]), base64.b64decode(f.get("sample", "")))
            old = files.get(f["path"])
            oid = None if old is None else (old["sha256"] if old["lfs"] else old["oid"])
            out.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                        "oid": oid})
        return {"files": out, "commitOid": cid}

    def _commit(self, repo: dict, rev: str) -> dict:
        hub = self.server.hub
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
        head = resolve_rev(repo, rev)
        if create_pr:
            repo["prs"] += 1
            branch = f"refs/pr/{repo['prs']}"
        elif rev in repo["branches"]:
            branch = rev
        else:
            raise HubError(400, f"Cannot commit to {rev}: not a branch")
        lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x.get("key") == "header"), None)
        if header is None:
            raise HubError(400, "Missing commit header")
        if header.get("parentCommit") and header["parentCommit"] != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo["commits"][head]["files"])
        for item in lines:
            key, v = item.get("key"), item.get("value", {})
            if key == "header":
                continue
            path = str(v.get("path", "")).strip("/")
            if key == "file":
                data = base64.b64decode(v["content"]) if v.get("encoding") == "base64" else v["content"].encode()
                files[path] = hub.store.entry(data, lfs=False)
            elif key == "lfsFile":
                if not hub.store.has(v["oid"], v.get("size")):
                    raise HubError(400, f"LFS object {v['oid']} for {path} was not uploaded")
                size = (hub.store.root / "objects" / v["oid"]).stat().st_size
                files[path] = {"sha256": v["oid"], "size": size, "lfs": True,
                               "oid": git_blob_oid(_pointer(v["oid"], size))}
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                gone = [p for p in files if p.startswith(path + "/")]
                if not gone:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise HubError(400, f"Unsupported commit operation: {key}")
        cid = hub.store.add_commit(repo, branch, head, files, header.get("summary") or "commit",
                                   header.get("description") or "")
        hub.store.save(repo)
        base = f"{hub.url}/{URL_PREFIX[repo['type']]}{repo['id']}"
        return {"success": True, "commitOid": cid, "commitUrl": f"{base}/commit/{cid}", "hookOutput": "",
                "pullRequestUrl": f"{base}/discussions/{repo['prs']}" if create_pr else None}

    def _lfs(self, rtype: str, repo_id: str, rest: list[str]) -> tuple[int, Any]:
        hub = self.server.hub
        self._repo(rtype, repo_id, write=True)
        self.extra_headers["Content-Type"] = "application/vnd.git-lfs+json"
        body = self._json()
        if rest == ["verify"]:
            if not hub.store.has(body.get("oid", ""), body.get("size")):
                raise HubError(404, f"LFS object {body.get('oid')} not found")
            return 200, {"message": "ok"}
        if rest != ["batch"]:
            return self._unhandled("POST")
        objects = []
        verify = f"{hub.url}/{URL_PREFIX[rtype]}{repo_id}.git/info/lfs/objects/verify"
        for o in body.get("objects", []):
            obj: dict[str, Any] = {"oid": o["oid"], "size": o["size"], "authenticated": True}
            if body.get("operation") == "download":
                obj["error"] = {"code": 404, "message": "Object does not exist"}
            elif not hub.store.has(o["oid"], o["size"]):
                obj["actions"] = {"upload": {"href": f"{hub.url}/_lfs/upload/{o['oid']}"},
                                  "verify": {"href": verify}}
            objects.append(obj)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def _resolve(self, rtype: str, repo_id: str, rest: list[str]) -> tuple[int, Any]:
        with self.server.hub.store.lock:
            repo = self._repo(rtype, repo_id)
            rev, path_segs = _split_rev(repo, rest)
            cid = resolve_rev(repo, rev)
            path = "/".join(unquote(s) for s in path_segs)
            entry = repo["commits"][cid]["files"].get(path)
        if entry is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        data = self._content(entry)
        etag = entry["sha256"] if entry["lfs"] else entry["oid"]
        self.extra_headers.update({"ETag": f'"{etag}"', "X-Repo-Commit": cid, "Accept-Ranges": "bytes",
                                   "Content-Type": "application/octet-stream"})
        rng = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
        if rng and (rng.group(1) or rng.group(2)):
            size = len(data)
            if rng.group(1):
                start, end = int(rng.group(1)), min(int(rng.group(2) or size - 1), size - 1)
            else:
                start, end = max(size - int(rng.group(2)), 0), size - 1
            if start >= size or start > end:
                self.extra_headers["Content-Range"] = f"bytes */{size}"
                return 416, b""
            self.extra_headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            return 206, data[start:end + 1]
        return 200, data


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: "LocalHub"


class LocalHub:
    """A Hub-compatible server on 127.0.0.1. Use as a context manager or call start()/stop()."""

    def __init__(self, storage_dir: Optional[os.PathLike | str] = None, *, lfs_threshold: int = 10 * 2**20,
                 accepted_tokens: Optional[set[str]] = None) -> None:
        self._own_dir = storage_dir is None
        self.storage_dir = Path(storage_dir or tempfile.mkdtemp(prefix="local-hub-"))
        self.store = _Store(self.storage_dir, lfs_threshold)
        self.accepted_tokens = accepted_tokens
        self.token = f"hf_dummy_test_token_{secrets.token_hex(12)}"  # what run_client sends by default
        self.requests: list[RequestRecord] = []
        self.unhandled: list[str] = []
        self._log_lock = threading.Lock()
        self._server: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("LocalHub is not started")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "LocalHub":
        if self._server is None:
            self._server = _Server(("127.0.0.1", 0), _Handler)
            self._server.hub = self
            self._thread = threading.Thread(target=self._server.serve_forever, name="local-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._own_dir:
            shutil.rmtree(self.storage_dir, ignore_errors=True)

    def __enter__(self) -> "LocalHub":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # helpers for tests ------------------------------------------------------------------
    def _files(self, repo_id: str, repo_type: str, revision: str) -> tuple[dict, str]:
        repo = self.store.load(repo_type, repo_id)
        cid = resolve_rev(repo, revision)
        return repo, cid

    def list_files(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> list[str]:
        repo, cid = self._files(repo_id, repo_type, revision)
        return sorted(repo["commits"][cid]["files"])

    def read_file(self, repo_id: str, path: str, repo_type: str = "dataset", revision: str = "main") -> bytes:
        """The bytes the server would serve for ``path`` (tampered bytes included)."""
        repo, cid = self._files(repo_id, repo_type, revision)
        entry = repo["commits"][cid]["files"][path]
        return self.store.get(entry.get("served", entry["sha256"]))

    def is_lfs(self, repo_id: str, path: str, repo_type: str = "dataset", revision: str = "main") -> bool:
        repo, cid = self._files(repo_id, repo_type, revision)
        return bool(repo["commits"][cid]["files"][path]["lfs"])

    def commit_count(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> int:
        """Number of commits in the first-parent history of ``revision`` (the initial commit included)."""
        repo, cid = self._files(repo_id, repo_type, revision)
        n = 0
        while cid:
            n += 1
            parents = repo["commits"][cid]["parents"]
            cid = parents[0] if parents else None
        return n

    def head(self, repo_id: str, repo_type: str = "dataset", revision: str = "main") -> str:
        return self._files(repo_id, repo_type, revision)[1]

    def is_private(self, repo_id: str, repo_type: str = "dataset") -> bool:
        return bool(self.store.load(repo_type, repo_id)["private"])

    def tamper(self, repo_id: str, path: str, new_bytes: bytes, repo_type: str = "dataset",
               revision: str = "main", *, keep_metadata: bool = False) -> None:
        """Overwrite ``path`` in the head commit of ``revision`` in place: no new commit, same sha.

        Default: the file's metadata (tree/paths-info oid, size, LFS sha256, ETag) follows the new
        bytes. ``keep_metadata=True`` simulates a lying/corrupted server: all metadata keeps
        describing the original file while ``resolve`` serves ``new_bytes``.
        Clients with a warm cache for that commit keep their cached copy (use a fresh cache).
        """
        with self.store.lock:
            repo, cid = self._files(repo_id, repo_type, revision)
            files = repo["commits"][cid]["files"]
            old = files.get(path)
            if keep_metadata and old is not None:
                files[path] = {**old, "served": self.store.put(new_bytes)}
            else:
                lfs = old["lfs"] if old else self.store.is_lfs(path, len(new_bytes), new_bytes[:512])
                files[path] = self.store.entry(new_bytes, lfs=lfs)
            self.store.save(repo)

    def clear_requests(self) -> None:
        with self._log_lock:
            self.requests.clear()
            self.unhandled.clear()

    def authorized_requests(self) -> list[RequestRecord]:
        return [r for r in self.requests if "authorization" in r.headers]


# Child-process guard: the client may only resolve loopback hosts (this machine is offline).
_GUARD = """\
import socket as _hub_socket
_hub_getaddrinfo = _hub_socket.getaddrinfo
def _hub_guard(host, *args, **kwargs):
    if host not in (None, "127.0.0.1", "localhost", "::1", b"127.0.0.1", b"localhost"):
        raise OSError(f"local-hub guard: refusing to resolve non-loopback host {host!r}")
    return _hub_getaddrinfo(host, *args, **kwargs)
_hub_socket.getaddrinfo = _hub_guard
del _hub_socket
"""


def client_env(hub: LocalHub, home: os.PathLike | str, token: Optional[str] | bool = None) -> dict[str, str]:
    """Environment for a client process talking to ``hub`` (fresh caches under ``home``).

    ``token=None`` sends ``hub.token``; ``token=False`` sends no token at all.
    """
    home = Path(home)
    proxies = ("http_proxy", "https_proxy", "all_proxy")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "HUGGING_FACE_")) and k.lower() not in proxies}
    env.update({
        "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home / "hf_home"),
        "HF_DATASETS_CACHE": str(home / "hf_datasets_cache"), "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
    })
    if token is not False:
        env["HF_TOKEN"] = token if isinstance(token, str) else hub.token
    repo_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root, env.get("PYTHONPATH")) if p)
    return env


def run_client(hub: LocalHub, code: str, tmp_path: os.PathLike | str, *, token: Optional[str] | bool = None,
               extra_env: Optional[dict[str, str]] = None, timeout: float = 120, check: bool = True,
               ) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a subprocess pointed at ``hub`` (caches under ``tmp_path``).

    The child cannot resolve non-loopback hosts. With ``check=True`` a non-zero exit raises
    AssertionError carrying the child's stdout/stderr.
    """
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    env = client_env(hub, tmp_path, token)
    env.update(extra_env or {})
    proc = subprocess.run([sys.executable, "-c", _GUARD + textwrap.dedent(code)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"client exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
                             f"\n--- unhandled routes: {hub.unhandled}")
    return proc


try:
    import pytest
except ImportError:  # pragma: no cover - only for use outside pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="module")
    def local_hub() -> Iterator[LocalHub]:
        """A LocalHub shared by one test module (use unique repo names per test)."""
        with LocalHub() as hub:
            yield hub
