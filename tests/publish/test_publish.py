"""``udp-datasets publish`` / ``verify`` against the local Hub (tests/hub_server.py).

The real ``huggingface_hub``, ``datasets`` and ``webdataset`` clients run in subprocesses
pointed at a ``LocalHub`` on 127.0.0.1 (``HF_ENDPOINT`` is read at import time). Protected
folders come from real protect runs shared with tests/publish/test_verify.py.

Every client run is checked for the token: the dummy ``HF_TOKEN`` must reach the server
(writes need it) and appear nowhere else, not in stdout/stderr (debug logging included),
the card, the manifest, the job record, the client's caches or the server's storage.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from hub_server import LocalHub, local_hub, run_client  # noqa: F401  (local_hub is a fixture)
from test_verify import decode, png_bytes, protected
from udp_datasets.records.manifest import read_manifest


@pytest.fixture()
def output(tmp_path, tmp_path_factory, photos32, grey_faces, unlearnable_surrogate):
    """output(kind) -> (source folder, a private copy of a protected output of that kind)."""
    def make(kind: str) -> tuple[Path, Path]:
        source, out = protected(kind, tmp_path_factory.getbasetemp(), photos32, grey_faces, unlearnable_surrogate)
        dst = tmp_path / f"protected-{kind}"
        shutil.copytree(out, dst)
        return source, dst
    return make


def client(hub: LocalHub, code: str, tmp_path: Path, **kwargs) -> tuple[dict, str]:
    """Run ``code`` (it calls ``emit(dict)``) in a client process; return (result, all output).

    Checks that the token appears in no output and no file the client wrote."""
    prelude = ("import json, sys\nfrom udp_datasets.cli import main\n"
               "def emit(obj):\n    print('RESULT ' + json.dumps(obj), flush=True)\n")
    proc = run_client(hub, prelude + code, tmp_path, timeout=300, **kwargs)
    output = proc.stdout + proc.stderr
    assert_no_token(hub, output, tmp_path)
    assert hub.unhandled == [], hub.unhandled
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-5000:]
    return json.loads(lines[-1][len("RESULT "):]), output


def assert_no_token(hub: LocalHub, output: str, *folders: Path) -> None:
    token = hub.token
    assert token not in output
    assert not any(r.auth_echoed for r in hub.requests)
    for folder in (*folders, hub.storage_dir):
        for path in Path(folder).rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert token.encode() not in path.read_bytes(), f"token written into {path}"


def card_yaml(hub: LocalHub, repo: str, revision: str = "main") -> dict:
    text = hub.read_file(repo, "README.md", revision=revision).decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_publish_arrow_load_stream_verify_then_tamper(local_hub, output, tmp_path):
    source, out = output("arrow")
    manifest = read_manifest(out / "manifest.parquet").to_pylist()
    local_hub.clear_requests()
    result, printed = client(local_hub, f"""
import hashlib, datasets
from huggingface_hub import DatasetCard
rc = main(["-v", "publish", {str(out)!r}, "test-user/faces", "--source", {str(source)!r},
           "--license", "cc-by-4.0"])
def rows(ds):
    cast = ds.cast_column("image", datasets.Image(decode=False))
    return [[hashlib.sha256(r["image"]["bytes"]).hexdigest(), r["label"]] for r in cast]
ds = datasets.load_dataset("test-user/faces", split="train")
stream = datasets.load_dataset("test-user/faces", split="train", streaming=True)
card = DatasetCard.load("test-user/faces")
first = ds[0]["image"]
emit({{"rc": rc, "rows": rows(ds), "stream": rows(stream), "features": str(ds.features),
      "decoded": [first.format, first.mode, list(first.size)],
      "card": {{"license": card.data.license, "tags": card.data.tags}}, "text": card.text,
      "verify": main(["verify", "test-user/faces", "--source", {str(source)!r}])}})
""", tmp_path / "client")
    assert result["rc"] == 0 and result["verify"] == 0, printed[-3000:]
    files = local_hub.list_files("test-user/faces")
    assert files == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet", "manifest.parquet",
                     "udp_protection.json"]
    assert local_hub.commit_count("test-user/faces") == 2  # one commit: data, card, manifest, record
    # the protected images, in order, as an Image() column with the other columns as they were
    expected = [[m["sha256"], label] for m, label in zip(manifest, _labels(out))]
    assert result["rows"] == result["stream"] == expected
    assert "Image(" in result["features"] and "ClassLabel(names=['cats', 'faces'])" in result["features"]
    assert result["decoded"][1] in ("RGB", "L")
    # the card: YAML the Hub accepts, parsed back by DatasetCard.load
    meta = card_yaml(local_hub, "test-user/faces")
    assert result["card"] == {"license": "cc-by-4.0", "tags": ["unlearnable-examples", "udp-protected", "image"]}
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    protection = meta["udp_protection"]
    record = json.loads((out / "udp_protection.json").read_text())
    assert protection["config"] == record["config"] and protection["budget_levels"] == 8
    assert protection["surrogate"]["sha256"] == record["surrogate"]["sha256"]
    assert protection["count"] == 6 and protection["source"]["id"] == str(source)
    for section in ("## What the protection is", "## How to verify", "## Known limits", "JPEG"):
        assert section in result["text"]
    assert any(r.path == "/api/validate-yaml" for r in local_hub.requests)
    assert "verify test-user/faces @" in printed and "L-inf measured for 6 samples" in printed

    # tamper one row of the Parquet shard on the server (no new commit): verify names that sample
    shard = "data/train-00000-of-00001.parquet"
    table = pq.read_table(io.BytesIO(local_hub.read_file("test-user/faces", shard)))
    data = table.to_pylist()
    pixels = decode(data[2]["image"]["bytes"]).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    data[2]["image"]["bytes"] = png_bytes(pixels)
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(data, schema=table.schema), buf)
    local_hub.tamper("test-user/faces", shard, buf.getvalue())
    result, printed = client(local_hub, """
emit({"rc": main(["verify", "test-user/faces", "--json", "report.json"]),
      "report": json.load(open("report.json"))})
""", tmp_path / "fresh-client")
    assert result["rc"] == 1
    assert [f["key"] for f in result["report"]["findings"]["altered"]] == [manifest[2]["key"]]
    assert result["report"]["verified"] == 5 and manifest[2]["key"] in printed


def test_publish_refuses_an_unprotected_sample_and_uploads_nothing(local_hub, output, tmp_path):
    source, out = output("imagefolder")
    clean = decode((source / "faces" / "face1.png").read_bytes())
    (out / "faces" / "face1.png").write_bytes(png_bytes(clean))  # someone copied the original back in
    key = next(m["key"] for m in read_manifest(out / "manifest.parquet").to_pylist()
               if m["source"] == "faces/face1.png")
    local_hub.clear_requests()
    result, printed = client(local_hub, f"""
emit({{"rc": main(["publish", {str(out)!r}, "test-user/refused"])}})
""", tmp_path / "client")
    assert result["rc"] == 1
    assert "refusing to publish" in printed and "nothing was uploaded" in printed
    assert "unprotected" in printed and key in printed
    assert local_hub.requests == []  # not even a repo lookup
    assert not local_hub.store.exists("dataset", "test-user/refused")


def test_publish_private_branch_and_pull_request(local_hub, output, tmp_path):
    _, out = output("imagefolder")
    repo = "test-user/private-faces"
    result, printed = client(local_hub, f"""
import datasets
from huggingface_hub import HfApi
rc = main(["publish", {str(out)!r}, {repo!r}, "--private", "--revision", "dev/v1",
           "--commit-message", "first protected release"])
ds = datasets.load_dataset({repo!r}, split="train", revision="dev/v1")
pr = main(["publish", {str(out)!r}, {repo!r}, "--create-pr"])
api = HfApi()
refs = api.list_repo_refs({repo!r}, repo_type="dataset", include_pull_requests=True)
public = main(["publish", {str(out)!r}, "test-user/public-one"])
again = main(["publish", {str(out)!r}, "test-user/public-one", "--private"])
emit({{"rc": rc, "n": len(ds), "columns": ds.column_names, "pr": pr, "prs": [p.ref for p in refs.pull_requests],
      "commits": [c.title for c in api.list_repo_commits({repo!r}, repo_type="dataset", revision="dev/v1")],
      "verify": main(["verify", {repo!r} + "@dev/v1"]), "public": public, "again": again}})
""", tmp_path / "client")
    assert result["rc"] == 0 and result["n"] == 6 and result["columns"] == ["image", "label"]
    assert local_hub.is_private(repo)
    assert local_hub.list_files(repo) == [".gitattributes"]  # main untouched: the release is on the branch
    branch = local_hub.list_files(repo, revision="dev/v1")
    assert {"README.md", "manifest.parquet", "metadata.jsonl", "cats/photo0.png", "faces/face1.png"} <= set(branch)
    assert result["commits"][0] == "first protected release"
    assert result["verify"] == 0 and "verify test-user/private-faces@dev/v1 @" in printed
    assert result["pr"] == 0 and result["prs"] == ["refs/pr/1"] and "pull request" in printed
    assert "README.md" in local_hub.list_files(repo, revision="refs/pr/1")
    assert result["public"] == 0 and result["again"] == 2 and "is public" in printed
    assert sorted(card_yaml(local_hub, repo, "dev/v1")["configs"][0]["data_files"][0]["path"]) == [
        "cats/photo*.png", "faces/face*.png", "metadata.jsonl"]
    # without the token the private repo does not exist
    anon, anon_out = client(local_hub, f"""
emit({{"rc": main(["verify", {repo!r} + "@dev/v1"])}})
""", tmp_path / "anon", token=False)
    assert anon["rc"] == 2 and "RepositoryNotFound" in anon_out


def test_publish_webdataset_shards_stream_and_verify_against_source(local_hub, output, tmp_path):
    source, out = output("webdataset")
    repo = "test-user/shards"
    result, printed = client(local_hub, f"""
import datasets, webdataset as wds
from huggingface_hub import hf_hub_url
rc = main(["publish", {str(out)!r}, {repo!r}])
urls = [hf_hub_url({repo!r}, f"shard-0000{{i}}.tar", repo_type="dataset") for i in range(2)]
stream = wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil")
samples = [[s["__key__"], list(s["png"].size), s["txt"]]
           for s in stream]
hf = datasets.load_dataset({repo!r}, split="train", streaming=True)
emit({{"rc": rc, "samples": samples, "features": str(hf.features), "n": sum(1 for _ in hf),
      "verify": main(["verify", {repo!r}, "--source", {str(source)!r}])}})
""", tmp_path / "client")
    assert result["rc"] == 0 and result["verify"] == 0, printed[-3000:]
    # the runner's .udp/ bookkeeping stays behind; its merged manifest and job record go to the root
    assert local_hub.list_files(repo) == [".gitattributes", "README.md", "manifest.parquet", "shard-00000.tar",
                                          "shard-00001.tar", "udp_protection.json"]
    assert json.loads(local_hub.read_file(repo, "udp_protection.json")) == json.loads(
        (out / ".udp" / "job.json").read_text())
    assert [s[0] for s in result["samples"]] == [f"sample{i:04d}" for i in range(6)]
    assert [s[1] for s in result["samples"]] == [[32, 32]] * 4 + [[25, 25]] * 2
    assert [s[2] for s in result["samples"]] == ["cats"] * 4 + ["faces"] * 2
    assert result["n"] == 6 and "'png': Image(" in result["features"]
    assert "L-inf measured for 6 samples" in printed
    published = local_hub.read_file(repo, "shard-00000.tar")
    assert hashlib.sha256(published).digest() == hashlib.sha256((out / "shard-00000.tar").read_bytes()).digest()


def _labels(out: Path) -> list[int]:
    from udp_datasets.jobs.dataset_job import load_protected

    return load_protected(out)["label"]


def test_publish_card_yaml_parses_and_shows_an_evaluation_report(output):
    from huggingface_hub import DatasetCard

    from udp_datasets.publish.card import render_card
    from udp_datasets.publish.verify import load_manifest, read_record

    _, out = output("imagefolder")
    record = {**read_record(out), "source_info": {"id": "someone/photos", "type": "hub", "revision": "abc123",
                                                  "license": "cc-by-4.0"}}
    # what `udp-datasets evaluate` writes into report.json for the card: its own table and verdict
    efficacy = ("| training set | FD | FD / clean |\n|---|---|---|\n| clean | 1.000 | 1.00x |\n"
                "| protected | 1.200 | 1.20x |\n\nNo protected set reaches the 3x goal: the strongest, "
                "`protected`, raises the victim's FD 1.20x over the clean-trained victim. On this setup the "
                "protection is not shown to work.")
    report = {"victims": {"clean": {"fd": 1.0, "fd_ratio_vs_clean": 1.0},
                          "protected": {"fd": 1.2, "fd_ratio_vs_clean": 1.2}},
              "settings": {"victim": {"architecture": "victim-tiny", "train_steps": 10, "resolution": 16}},
              "card_markdown": efficacy}
    card = render_card(record, load_manifest(out), repo_id="me/photos-protected", layout="imagefolder",
                       data_files=["cats/*.png", "faces/*.png", "metadata.jsonl"], eval_report=report)
    parsed = DatasetCard(str(card))
    assert parsed.data.license == "cc-by-4.0" and parsed.data.source_datasets == ["extended|someone/photos"]
    assert parsed.data.udp_protection["source"] == {"id": "someone/photos", "revision": "abc123"}
    assert parsed.data.udp_protection["config"] == record["config"]
    section = parsed.text.split("## Measured efficacy\n\n", 1)[1].split("\n\n## Known limits", 1)[0]
    assert section == efficacy  # the evaluation's own table and verdict, as it wrote them
    assert "| victims.protected.fd" not in parsed.text  # no generic metric dump beside it
    assert str(out) not in parsed.text.split("## How to verify")[0]  # no local paths in the prose


def test_publish_data_patterns_never_catch_the_manifest():
    from udp_datasets.publish.hub import data_patterns

    assert data_patterns(["shard-000.parquet", "shard-001.parquet"], exclude=["manifest.parquet"]) == [
        "shard-00*.parquet"]
    assert data_patterns(["a.parquet", "b.parquet"], exclude=["manifest.parquet"]) == ["a.parquet", "b.parquet"]
    assert data_patterns(["m1.parquet", "m2.parquet"], exclude=["manifest.parquet"]) == ["m1.parquet", "m2.parquet"]
    assert data_patterns(["x/a-1.tar", "x/a-2.tar", "y.tar"]) == ["y.tar", "x/a-*.tar"]


def test_publish_card_shows_a_report_without_a_card_block_as_text_and_metrics():
    from udp_datasets.publish.card import render_card

    report = {"summary": "FD rises 1.2x over the clean victim.",
              "victims": {"protected": {"fd": 1.2, "fd_ratio_vs_clean": 1.2}}, "steps": 10}
    text = str(render_card({}, None, repo_id="me/x", layout="parquet", data_files="data/*", eval_report=report))
    section = text.split("## Measured efficacy\n\n", 1)[1].split("\n\n## Known limits", 1)[0]
    assert section.splitlines() == ["FD rises 1.2x over the clean victim.", "", "| metric | value |", "|---|---|",
                                    "| victims.protected.fd | 1.2 |", "| victims.protected.fd_ratio_vs_clean | 1.2 |",
                                    "| steps | 10 |"]
    empty = str(render_card({}, None, repo_id="me/x", layout="parquet", data_files="data/*"))
    assert "Not measured for this release" in empty
