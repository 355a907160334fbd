"""The local Hub (tests/hub_server.py) works with the real huggingface_hub and datasets clients.

Every client runs in a subprocess (HF_ENDPOINT is read at import time) against one
module-scoped server; each test uses its own repo names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from hub_server import LocalHub, local_hub, run_client  # noqa: F401  (local_hub is a fixture)


def _run(hub: LocalHub, code: str, tmp_path: Path, **kwargs) -> dict:
    """Run ``code`` (which must call ``emit(dict)``), check the token never leaks, return the dict."""
    prelude = "import json\ndef emit(obj):\n    print('RESULT ' + json.dumps(obj))\n"
    proc = run_client(hub, prelude + code, tmp_path, **kwargs)
    assert hub.token not in proc.stdout and hub.token not in proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    assert hub.unhandled == [], hub.unhandled
    return json.loads(lines[-1][len("RESULT "):])


def test_upload_folder_regular_and_lfs(local_hub: LocalHub, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("hello hub\n")
    (folder / "sub" / "meta.json").write_text('{"k": 1}')
    blob = hashlib.sha256(b"seed").digest() * 100 + b"\0binary"  # NUL byte + .parquet => LFS
    (folder / "sub" / "data.parquet").write_bytes(blob)
    local_hub.clear_requests()
    out = _run(local_hub, f"""
import os
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
api = HfApi()
url = api.create_repo("test-user/folder", repo_type="dataset")
again = api.create_repo("test-user/folder", repo_type="dataset", exist_ok=True)
info = api.upload_folder(folder_path={str(folder)!r}, repo_id="test-user/folder", repo_type="dataset")
tree = api.list_repo_tree("test-user/folder", repo_type="dataset", recursive=True, expand=True)
top = api.list_repo_tree("test-user/folder", repo_type="dataset")
snap = snapshot_download("test-user/folder", repo_type="dataset")
got = hf_hub_download("test-user/folder", "sub/data.parquet", repo_type="dataset")
paths = api.get_paths_info("test-user/folder", ["a.txt", "sub", "missing"], repo_type="dataset")
api.create_repo("test-user/a-model")
api.upload_file(path_or_fileobj=b"weights", path_in_repo="w.txt", repo_id="test-user/a-model")
emit({{
    "url": url, "again": again, "oid": info.oid,
    "files": api.list_repo_files("test-user/folder", repo_type="dataset"),
    "tree": {{e.path: getattr(e, "lfs", None) and e.lfs.sha256 for e in tree}},
    "last_commit": [e.last_commit is not None for e in tree],
    "top": sorted(e.path for e in top),
    "commits": [c.title for c in api.list_repo_commits("test-user/folder", repo_type="dataset")],
    "sha": api.dataset_info("test-user/folder").sha,
    "snapshot": sorted(os.path.relpath(os.path.join(d, f), snap) for d, _, fs in os.walk(snap) for f in fs),
    "download": open(got, "rb").read().hex(),
    "paths": sorted(p.path for p in paths),
    "model": open(hf_hub_download("test-user/a-model", "w.txt"), "rb").read().decode(),
}})
""", tmp_path)
    assert out["url"] == out["again"] == f"{local_hub.url}/datasets/test-user/folder"
    files = [".gitattributes", "a.txt", "sub/data.parquet", "sub/meta.json"]
    assert out["files"] == files == local_hub.list_files("test-user/folder")
    assert out["tree"]["sub/data.parquet"] == hashlib.sha256(blob).hexdigest()
    assert out["tree"]["a.txt"] is None and "sub" in out["tree"] and all(out["last_commit"])
    assert out["top"] == [".gitattributes", "a.txt", "sub"]
    assert out["commits"] == ["Upload folder using huggingface_hub", "initial commit"]
    assert out["sha"] == out["oid"] == local_hub.head("test-user/folder")
    assert sorted(out["snapshot"]) == files
    assert bytes.fromhex(out["download"]) == blob == local_hub.read_file("test-user/folder", "sub/data.parquet")
    assert out["paths"] == ["a.txt", "sub"]
    assert out["model"] == "weights"
    assert local_hub.is_lfs("test-user/folder", "sub/data.parquet")
    assert not local_hub.is_lfs("test-user/folder", "a.txt")
    assert local_hub.commit_count("test-user/folder") == 2
    lfs_calls = [(r.method, r.path.split("/")[-1]) for r in local_hub.requests if "lfs" in r.path]
    assert ("POST", "batch") in lfs_calls and ("POST", "verify") in lfs_calls
    assert any(m == "PUT" for m, _ in lfs_calls)


def test_branch_and_pr_round_trip(local_hub: LocalHub, tmp_path: Path) -> None:
    out = _run(local_hub, """
from huggingface_hub import HfApi, hf_hub_download
api = HfApi()
api.create_repo("test-user/branchy", repo_type="dataset")
api.upload_file(path_or_fileobj=b"main v1", path_in_repo="x.txt", repo_id="test-user/branchy", repo_type="dataset")
api.create_branch("test-user/branchy", branch="feature/x", repo_type="dataset")
api.upload_file(path_or_fileobj=b"branch v2", path_in_repo="x.txt", repo_id="test-user/branchy",
                repo_type="dataset", revision="feature/x")
api.upload_file(path_or_fileobj=b"only here", path_in_repo="y.txt", repo_id="test-user/branchy",
                repo_type="dataset", revision="feature/x")
pr = api.upload_file(path_or_fileobj=b"proposal", path_in_repo="z.txt", repo_id="test-user/branchy",
                     repo_type="dataset", create_pr=True)
read = lambda rev, f: open(hf_hub_download("test-user/branchy", f, repo_type="dataset", revision=rev)).read()
refs = api.list_repo_refs("test-user/branchy", repo_type="dataset", include_pull_requests=True)
emit({
    "main": read("main", "x.txt"), "branch": read("feature/x", "x.txt"), "pr": read(pr.pr_revision, "z.txt"),
    "branch_files": api.list_repo_files("test-user/branchy", repo_type="dataset", revision="feature/x"),
    "main_files": api.list_repo_files("test-user/branchy", repo_type="dataset"),
    "branches": sorted(b.name for b in refs.branches), "prs": [p.ref for p in refs.pull_requests],
    "pr_revision": pr.pr_revision, "n_branch_commits": len(api.list_repo_commits(
        "test-user/branchy", repo_type="dataset", revision="feature/x")),
})
""", tmp_path)
    assert (out["main"], out["branch"], out["pr"]) == ("main v1", "branch v2", "proposal")
    assert out["branch_files"] == [".gitattributes", "x.txt", "y.txt"]
    assert out["main_files"] == [".gitattributes", "x.txt"] == local_hub.list_files("test-user/branchy")
    assert out["branches"] == ["feature/x", "main"] and out["prs"] == ["refs/pr/1"] == [out["pr_revision"]]
    assert out["n_branch_commits"] == 4 == local_hub.commit_count("test-user/branchy", revision="feature/x")
    assert local_hub.read_file("test-user/branchy", "z.txt", revision="refs/pr/1") == b"proposal"


def test_datasets_push_to_hub_and_load(local_hub: LocalHub, tmp_path: Path) -> None:
    out = _run(local_hub, """
import io
import datasets
from PIL import Image

def png(rgb):
    buf = io.BytesIO()
    Image.new("RGB", (6, 5), rgb).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}

features = datasets.Features({"image": datasets.Image(), "text": datasets.Value("string")})
main = datasets.Dataset.from_dict({"image": [png((255, 0, 0)), png((0, 255, 0))], "text": ["red", "green"]},
                                  features=features)
dev = datasets.Dataset.from_dict({"image": [png((0, 0, 255))], "text": ["blue"]}, features=features)
main.push_to_hub("test-user/images")
dev.push_to_hub("test-user/images", revision="dev/v2")

def rows(ds):
    return [[r["text"], list(r["image"].getpixel((0, 0))), list(r["image"].size)] for r in ds]

result = {}
for rev in ("main", "dev/v2"):
    result[rev] = rows(datasets.load_dataset("test-user/images", split="train", revision=rev))
    result[rev + "-streaming"] = rows(datasets.load_dataset("test-user/images", split="train", revision=rev,
                                                            streaming=True))
emit(result)
""", tmp_path, timeout=180)
    red_green = [["red", [255, 0, 0], [6, 5]], ["green", [0, 255, 0], [6, 5]]]
    assert out["main"] == out["main-streaming"] == red_green
    assert out["dev/v2"] == out["dev/v2-streaming"] == [["blue", [0, 0, 255], [6, 5]]]
    parquet = [f for f in local_hub.list_files("test-user/images") if f.endswith(".parquet")]
    assert parquet and all(local_hub.is_lfs("test-user/images", f) for f in parquet)
    assert "README.md" in local_hub.list_files("test-user/images", revision="dev/v2")


def test_private_repo_requires_token_and_error_codes(local_hub: LocalHub, tmp_path: Path) -> None:
    local_hub.clear_requests()
    out = _run(local_hub, """
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
api = HfApi()
api.create_repo("test-user/secret", repo_type="dataset", private=True)
api.upload_file(path_or_fileobj=b"classified", path_in_repo="s.txt", repo_id="test-user/secret", repo_type="dataset")

def error(fn):
    try:
        fn()
    except Exception as e:
        return type(e).__name__
    return None

dl = lambda **kw: hf_hub_download("test-user/secret", repo_type="dataset", **kw)
emit({
    "private": api.dataset_info("test-user/secret").private,
    "authed": open(dl(filename="s.txt")).read(),
    "anon_info": error(lambda: HfApi(token=False).dataset_info("test-user/secret")),
    "anon_download": error(lambda: dl(filename="s.txt", token=False, cache_dir="anon-cache")),
    "missing_file": error(lambda: dl(filename="nope.txt")),
    "missing_rev": error(lambda: dl(filename="s.txt", revision="no-such-branch")),
    "missing_repo": error(lambda: hf_hub_download("test-user/ghost", "s.txt", repo_type="dataset")),
    "anon_create": error(lambda: HfApi(token=False).create_repo("test-user/anon", repo_type="dataset")),
})
""", tmp_path)
    assert out["private"] is True and local_hub.is_private("test-user/secret")
    assert out["authed"] == "classified"
    assert out["anon_info"] == out["missing_repo"] == "RepositoryNotFoundError"
    assert out["anon_download"] == "RepositoryNotFoundError"
    assert out["missing_file"] == "RemoteEntryNotFoundError"
    assert out["missing_rev"] == "RevisionNotFoundError"
    assert out["anon_create"] is not None
    anon = [r for r in local_hub.requests if "secret" in r.path and "authorization" not in r.headers]
    assert anon and all(r.status == 401 for r in anon)
    assert all(r.headers["authorization"] == f"Bearer {local_hub.token}" for r in local_hub.authorized_requests())


def test_dataset_card_push_and_load(local_hub: LocalHub, tmp_path: Path) -> None:
    out = _run(local_hub, """
from huggingface_hub import DatasetCard, HfApi
HfApi().create_repo("test-user/carded", repo_type="dataset")
card = DatasetCard("---\\nlicense: cc-by-4.0\\npretty_name: Carded\\ntags:\\n- unlearnable\\n---\\n# Carded\\nhello\\n")
card.push_to_hub("test-user/carded")
loaded = DatasetCard.load("test-user/carded")
try:
    HfApi().upload_file(path_or_fileobj=b"---\\nlicense: [unclosed\\n---\\nbody\\n", path_in_repo="README.md",
                        repo_id="test-user/carded", repo_type="dataset")
    bad = None
except ValueError as e:
    bad = "Invalid metadata" in str(e)
emit({"license": loaded.data.license, "tags": loaded.data.tags, "text": loaded.text,
      "card_data": HfApi().dataset_info("test-user/carded").card_data.to_dict(), "bad": bad})
""", tmp_path)
    assert out["license"] == "cc-by-4.0" and out["tags"] == ["unlearnable"]
    assert "hello" in out["text"]
    assert out["card_data"]["pretty_name"] == "Carded"
    assert out["bad"] is True
    assert b"license: cc-by-4.0" in local_hub.read_file("test-user/carded", "README.md")
    assert any(r.path == "/api/validate-yaml" for r in local_hub.requests)


@pytest.mark.parametrize("keep_metadata", [False, True])
def test_tamper_changes_what_clients_download(local_hub: LocalHub, tmp_path: Path, keep_metadata: bool) -> None:
    repo = f"test-user/tamper-{int(keep_metadata)}"
    code = f"""
from huggingface_hub import HfApi, hf_hub_download
api = HfApi()
if not api.repo_exists({repo!r}, repo_type="dataset"):
    api.create_repo({repo!r}, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"genuine", path_in_repo="f.txt", repo_id={repo!r}, repo_type="dataset")
    api.upload_file(path_or_fileobj=b"\\0genuine", path_in_repo="f.bin", repo_id={repo!r}, repo_type="dataset")
(info,) = api.get_paths_info({repo!r}, ["f.bin"], repo_type="dataset")
emit({{"txt": open(hf_hub_download({repo!r}, "f.txt", repo_type="dataset"), "rb").read().hex(),
      "bin": open(hf_hub_download({repo!r}, "f.bin", repo_type="dataset"), "rb").read().hex(),
      "lfs_sha256": info.lfs.sha256}})
"""
    before = _run(local_hub, code, tmp_path / "first")
    sha, n = local_hub.head(repo), local_hub.commit_count(repo)
    local_hub.tamper(repo, "f.txt", b"evil!", keep_metadata=keep_metadata)
    local_hub.tamper(repo, "f.bin", b"\0evil!!", keep_metadata=keep_metadata)
    after = _run(local_hub, code, tmp_path / "fresh-cache")
    assert bytes.fromhex(before["txt"]) == b"genuine" and bytes.fromhex(after["txt"]) == b"evil!"
    assert bytes.fromhex(before["bin"]) == b"\0genuine" and bytes.fromhex(after["bin"]) == b"\0evil!!"
    assert local_hub.head(repo) == sha and local_hub.commit_count(repo) == n  # no client-visible commit
    expected = b"\0genuine" if keep_metadata else b"\0evil!!"
    assert after["lfs_sha256"] == hashlib.sha256(expected).hexdigest()


def test_token_is_sent_but_never_echoed_or_stored(local_hub: LocalHub, tmp_path: Path) -> None:
    _run(local_hub, """
from huggingface_hub import HfApi
api = HfApi()
api.create_repo("test-user/tokens", repo_type="dataset", private=True)
api.upload_file(path_or_fileobj=b"\\0" * 64, path_in_repo="x.bin", repo_id="test-user/tokens", repo_type="dataset")
try:
    api.upload_file(path_or_fileobj=b"x", path_in_repo="y.txt", repo_id="test-user/tokens", repo_type="dataset",
                    revision="missing-branch")
except Exception as e:
    print(repr(e))  # an error message must not carry the token either
emit({"ok": True})
""", tmp_path)
    authed = local_hub.authorized_requests()
    assert authed and all(r.headers["authorization"] == f"Bearer {local_hub.token}" for r in authed)
    assert not any(r.auth_echoed for r in local_hub.requests)
    token = local_hub.token.encode()
    stored = [p for p in local_hub.storage_dir.rglob("*") if p.is_file()]
    assert stored and not any(token in p.read_bytes() for p in stored)


def test_client_cannot_resolve_other_hosts(local_hub: LocalHub, tmp_path: Path) -> None:
    out = _run(local_hub, """
import socket
try:
    socket.getaddrinfo("huggingface.co", 443)
    blocked = False
except OSError as e:
    blocked = "local-hub guard" in str(e)
emit({"blocked": blocked, "loopback": bool(socket.getaddrinfo("127.0.0.1", 80))})
""", tmp_path)
    assert out == {"blocked": True, "loopback": True}
