"""Shard sources and sinks: WebDataset tars and Parquet in, the same layout out.

Real photographs (scikit-image) are written as JPEG / PNG members of real tar files
and Parquet files; the shard job protects them and every non-image byte is compared.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import io
import json
import tarfile
import threading
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from udp_datasets import Protector
from udp_datasets.cli.app import EXIT_QUARANTINED, main
from udp_datasets.images import decode_png_pixels
from udp_datasets.records.manifest import read_manifest
from udp_datasets.jobs.shard_job import run_shards
from udp_datasets.formats.codec import png_name as png_member_name
from udp_datasets.formats.parquet import png_path
from udp_datasets.formats.webdataset import split_key
from udp_datasets.sources.errors import SourceError
from udp_datasets.sources.shards import discover_shards, looks_like_shards

FLAGS = ["--resolution", "16", "--steps", "4", "--batch-size", "4"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture()
def cfg(tiny_config):
    return tiny_config.replace(steps=4, batch_size=4)


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG")
    return buf.getvalue()


def _member(name: str, data: bytes | None = None, mtime: int = 1_600_000_000, kind: bytes = tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = mtime, 0o640, 1000, 100, "ana", "staff"
    if data is not None:
        info.size = len(data)
    return info, data


def write_tar(path: Path, members, fmt=tarfile.GNU_FORMAT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if path.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(path, mode, format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def read_tar(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


@pytest.fixture()
def wds_shards(tmp_path, photos32, grey_faces):
    """3 shards: JPEG + caption + json + cls per sample, plus RGBA, grey and 2-image samples."""
    rgba = np.dstack([photos32[5], np.full((32, 32), 200, np.uint8)])
    shards = []
    k = 0
    for s in range(3):
        members = [_member("meta", kind=tarfile.DIRTYPE)] if s == 0 else []
        for i in range(4):
            key = f"s{s}-{i:04d}"
            members += [_member(f"{key}.jpg", _jpeg(photos32[k % len(photos32)])),
                        _member(f"{key}.txt", f"a caption ✓ {k}".encode()),
                        _member(f"{key}.json", json.dumps({"k": k, "x": [1, 2]}).encode()),
                        _member(f"{key}.cls", str(k % 3).encode())]
            k += 1
        if s == 1:
            members += [_member("rgba.png", _png(rgba, "RGBA")), _member("rgba.txt", b"transparent")]
            members += [_member("grey.png", _png(grey_faces[0][:, :, 0], "L"))]
        if s == 2:
            members += [_member("pair.left.jpg", _jpeg(photos32[0])), _member("pair.right.jpg", _jpeg(photos32[1])),
                        _member("pair.txt", b"stereo")]
        shards.append(write_tar(tmp_path / "src" / f"data-{s:06d}.tar", members))
    return shards


def test_brace_pattern_shards_keep_every_member(wds_shards, tmp_path, capsys, unlearnable_surrogate):
    import webdataset as wds

    dst = tmp_path / "out"
    pattern = str(tmp_path / "src" / "data-{000000..000002}.tar")
    assert main(["protect", pattern, str(dst), "--surrogate", unlearnable_surrogate, *FLAGS]) == 0
    assert "protected   15 samples (16 images) in 3 shards" in capsys.readouterr().out
    assert sorted(p.name for p in dst.iterdir()) == [".udp", "data-000000.tar", "data-000001.tar",
                                                      "data-000002.tar"]
    for shard in wds_shards:
        before, after = read_tar(shard), read_tar(dst / shard.name)
        assert [png_member_name(m.name) if m.name.endswith((".jpg", ".png")) else m.name for m, _ in before] == \
            [m.name for m, _ in after]
        for (m0, d0), (m1, d1) in zip(before, after):
            assert (m1.mode, m1.mtime, m1.uid, m1.gid, m1.uname, m1.gname, m1.type) == \
                (m0.mode, m0.mtime, m0.uid, m0.gid, m0.uname, m0.gname, m0.type)
            if m0.name.endswith((".jpg", ".png")):
                assert d1[:8] == b"\x89PNG\r\n\x1a\n"
                clean = np.asarray(Image.open(io.BytesIO(d0)).convert(Image.open(io.BytesIO(d1)).mode))
                prot = decode_png_pixels(d1).reshape(clean.shape)
                diff = np.abs(prot.astype(int) - clean.astype(int))
                assert 0 < diff.max() <= 8
                if m0.name == "rgba.png":  # alpha is carried through untouched
                    assert (prot[:, :, 3] == clean[:, :, 3]).all() and Image.open(io.BytesIO(d1)).mode == "RGBA"
            else:
                assert d1 == d0  # captions, json, cls, folders: byte for byte
        keys_in = [s["__key__"] for s in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False)]
        keys_out = [s["__key__"] for s in wds.WebDataset(str(dst / shard.name), shardshuffle=False,
                                                         empty_check=False)]
        assert keys_in == keys_out
    manifest = read_manifest(dst / ".udp" / "manifest.parquet").to_pylist()
    assert len(manifest) == 16 and {m["source"] for m in manifest} == {s.name for s in wds_shards}
    assert {"pair.left.jpg", "pair.right.jpg", "s0-0000", "rgba"} <= {m["key"] for m in manifest}
    by_key = {m["key"]: m for m in manifest}
    png = dict((m.name, d) for m, d in read_tar(dst / "data-000000.tar"))["s0-0000.png"]
    import hashlib

    assert by_key["s0-0000"]["sha256"] == hashlib.sha256(png).hexdigest()
    marker = json.loads((dst / ".udp" / "shards" / "data-000001.tar.done.json").read_text())
    assert marker["count"] == 6 and marker["images"] == 6 and marker["errors"] == 0
    assert marker["max_linf_levels"] <= 8 and marker["mean_psnr_db"] > 30 and marker["images_per_second"] > 0
    job = json.loads((dst / ".udp" / "job.json").read_text())
    assert job["count"] == 15 and job["passthrough"] == 1 and job["shards"] == 3
    assert job["config_hash"] == marker["config_hash"]


def test_gzip_shards_are_deterministic(tmp_path, photos32, cfg):
    members = []
    for i in range(3):
        members += [_member(f"k{i}.jpeg", _jpeg(photos32[i])), _member(f"k{i}.txt", b"t")]
    write_tar(tmp_path / "src" / "a.tar.gz", members, fmt=tarfile.PAX_FORMAT)
    run_shards(str(tmp_path / "src"), tmp_path / "o1", cfg, progress=False)
    run_shards(str(tmp_path / "src" / "a.tar.gz"), tmp_path / "o2", cfg, progress=False)
    one, two = (tmp_path / "o1" / "a.tar.gz").read_bytes(), (tmp_path / "o2" / "a.tar.gz").read_bytes()
    assert one == two and one[:2] == b"\x1f\x8b"
    assert [m.name for m, _ in read_tar(tmp_path / "o1" / "a.tar.gz")] == ["k0.png", "k0.txt", "k1.png", "k1.txt",
                                                                             "k2.png", "k2.txt"]


def test_corrupt_samples_are_quarantined_never_passed_through(tmp_path, photos32, capsys, unlearnable_surrogate):
    members = [_member("good.jpg", _jpeg(photos32[0])), _member("good.txt", b"fine"),
               _member("bad.jpg", _jpeg(photos32[1])[:60]), _member("bad.txt", b"its caption goes too"),
               _member("empty.png", b""), _member("empty.json", b"{}"),
               _member(".hidden.jpg", _jpeg(photos32[2])),  # an image outside any sample
               _member("clash.jpg", _jpeg(photos32[3])), _member("clash.png", _png(photos32[4])),
               _member("after.jpg", _jpeg(photos32[5]))]
    shard = write_tar(tmp_path / "src" / "one.tar", members)
    dst = tmp_path / "out"
    code = main(["protect", str(shard), str(dst), "--surrogate", unlearnable_surrogate, *FLAGS])
    out = capsys.readouterr().out
    assert code == EXIT_QUARANTINED and "quarantined 4" in out
    names = [m.name for m, _ in read_tar(dst / "one.tar")]
    assert names == ["good.png", "good.txt", "after.png"]  # whole bad samples left out
    errors = [json.loads(line) for line in (dst / ".udp" / "errors.jsonl").read_text().splitlines()]
    assert [(e["key"], e["shard"]) for e in errors] == [("bad", "one.tar"), ("empty", "one.tar"),
                                                        (".hidden.jpg", "one.tar"), ("clash", "one.tar")]
    assert any(word in errors[0]["reason"] for word in ("corrupt", "truncated", "not a readable image"))
    assert "empty" in errors[1]["reason"] and "no WebDataset key" in errors[2]["reason"]
    assert "would both be written as 'clash.png'" in errors[3]["reason"]
    job = json.loads((dst / ".udp" / "job.json").read_text())
    assert job["errors"] == 4 and job["count"] == 2
    assert json.loads((dst / ".udp" / "shards" / "one.tar.done.json").read_text())["errors"] == 4
    # a re-run skips the complete shard and still reports the quarantined samples
    assert main(["protect", str(shard), str(dst), "--surrogate", unlearnable_surrogate, "--allow-errors", *FLAGS]) == 0
    assert "0 done now, 1 already complete" in capsys.readouterr().out


def test_keys_with_dots_and_unicode(tmp_path, photos32, cfg):
    members = [_member("ünï_cödé-猫.jpg", _jpeg(photos32[0])), _member("ünï_cödé-猫.txt", "ß".encode()),
               _member("img.v2.final.jpg", _jpeg(photos32[1])), _member("img.v2.txt", b"dots"),
               _member("sub/dir/x.y.png", _png(photos32[2])), _member("sub/dir/x.json", b"{}")]
    write_tar(tmp_path / "src" / "u.tar", members, fmt=tarfile.PAX_FORMAT)
    assert split_key("img.v2.final.jpg") == ("img", "v2.final.jpg")  # WebDataset: key ends at the first dot
    assert split_key("sub/dir/x.y.png") == ("sub/dir/x", "y.png") and split_key(".x.jpg") == (None, None)
    run_shards(str(tmp_path / "src"), tmp_path / "out", cfg, progress=False)
    names = [m.name for m, _ in read_tar(tmp_path / "out" / "u.tar")]
    assert names == ["ünï_cödé-猫.png", "ünï_cödé-猫.txt", "img.v2.final.png", "img.v2.txt", "sub/dir/x.y.png",
                     "sub/dir/x.json"]
    manifest = read_manifest(tmp_path / "out" / ".udp" / "manifest.parquet")
    assert manifest.column("key").to_pylist() == ["ünï_cödé-猫", "img", "sub/dir/x"]

    # Parquet: keys come from a column and may hold anything, dots and unicode included
    table = pa.table({"key": ["a.b.c", "ключ.1", None], "image": [_jpeg(photos32[i]) for i in range(3)]})
    pq.write_table(table, tmp_path / "k.parquet")
    summary = run_shards(str(tmp_path / "k.parquet"), tmp_path / "pout", cfg, key_column="key", progress=False)
    assert summary.count == 2 and summary.errors == 1
    assert read_manifest(tmp_path / "pout" / ".udp" / "manifest.parquet").column("key").to_pylist() == \
        ["a.b.c", "ключ.1"]
    error = json.loads((tmp_path / "pout" / ".udp" / "errors.jsonl").read_text())
    assert error["row"] == 2 and "null" in error["reason"]


def test_parquet_round_trip(tmp_path, photos32, cfg):
    src = tmp_path / "src"
    src.mkdir()
    raw = pa.table({"id": pa.array([f"id-{i}" for i in range(7)]),
                    "img": pa.array([_jpeg(a) for a in photos32[:6]] + [b"not an image"], pa.binary()),
                    "score": pa.array(np.arange(7, dtype=np.float32)),
                    "tags": pa.array([[i, i + 1] for i in range(7)], pa.list_(pa.int16()))},
                   metadata={b"owner": b"me"})
    pq.write_table(raw, src / "raw.parquet", row_group_size=3, compression="zstd")
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["a", "b"])})
    hf = datasets.Dataset.from_dict({"image": [{"bytes": _jpeg(a), "path": f"/home/me/pics/{i}.jpg"}
                                               for i, a in enumerate(photos32[6:10])],
                                     "caption": list("wxyz"), "label": [0, 1, 0, 1]}, features=features)
    (src / "nested").mkdir()
    hf.to_parquet(str(src / "nested" / "hf.parquet"))
    summary = run_shards(str(src), tmp_path / "out", cfg, image_column=None, progress=False)
    assert summary.count == 10 and summary.errors == 1 and summary.shards == 2

    out = pq.ParquetFile(tmp_path / "out" / "raw.parquet")
    got = out.read()
    keep = [0, 1, 2, 3, 4, 5]
    assert got.schema.equals(pq.read_schema(src / "raw.parquet"), check_metadata=True)
    for col in ("id", "score", "tags"):
        assert got.column(col).to_pylist() == raw.take(keep).column(col).to_pylist()
    assert out.metadata.num_row_groups == 2  # input groups of 3, 3 and 1 rows; the last held only the bad row
    assert str(out.metadata.row_group(0).column(0).compression).upper() == "ZSTD"
    for jpg, png in zip(raw.column("img").to_pylist(), got.column("img").to_pylist()):
        clean = np.asarray(Image.open(io.BytesIO(jpg))).astype(int)
        assert 0 < np.abs(decode_png_pixels(png).astype(int) - clean).max() <= 8

    back = datasets.load_dataset("parquet", data_files=str(tmp_path / "out" / "nested" / "hf.parquet"),
                                 split="train")
    assert back.features == features and back["caption"] == list("wxyz") and back["label"] == [0, 1, 0, 1]
    raw_back = back.cast_column("image", datasets.Image(decode=False))["image"]
    assert [v["path"] for v in raw_back] == ["0.png", "1.png", "2.png", "3.png"]
    assert all(v["bytes"].startswith(b"\x89PNG") for v in raw_back)
    assert png_path("a/b.jpeg") == "a/b.png" and png_path(None) is None


def test_streaming_iterable_dataset_map_matches_the_shard_job(wds_shards, tmp_path, cfg):
    """``IterableDataset.map(protector, batched=True)`` on streamed WebDataset shards gives the
    same protected bytes as the shard job: both seed each sample by its key."""
    files = [str(p) for p in wds_shards[:1]]  # 4 plain samples, one batch
    stream = datasets.load_dataset("webdataset", data_files={"train": files}, split="train", streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    protector = Protector(cfg, image_column="jpg", key_column="__key__", progress=False)
    mapped = stream.map(protector, batched=True, batch_size=4,
                        features=protector.output_features(stream.features))
    rows = list(mapped.cast_column("jpg", datasets.Image(decode=False)))
    assert [r["__key__"] for r in rows] == ["s0-0000", "s0-0001", "s0-0002", "s0-0003"]
    assert rows[0]["txt"] == "a caption ✓ 0" and rows[0]["json"] == {"k": 0, "x": [1, 2]}
    run_shards(files, tmp_path / "out", cfg, progress=False)
    ours = {m.name: d for m, d in read_tar(tmp_path / "out" / "data-000000.tar")}
    for r in rows:
        assert r["jpg"]["bytes"] == ours[r["__key__"] + ".png"]
    # the robust form (raw bytes in, so the source hash is of the original file) agrees
    robust = list(protector.map(stream, batch_size=4).cast_column("jpg", datasets.Image(decode=False)))
    assert [r["jpg"]["bytes"] for r in robust] == [r["jpg"]["bytes"] for r in rows]
    # plain map without features works too (the image column then holds PNG dicts)
    plain = list(stream.map(protector, batched=True, batch_size=4).take(2))
    assert plain[0]["jpg"]["bytes"].startswith(b"\x89PNG")


def test_datasets_sources_sliced_and_streamed_agree(tmp_path, photos32, cfg):
    features = datasets.Features({"image": datasets.Image(), "n": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in photos32[:6]], "n": list(range(6))},
                                    features=features)
    sliced = run_shards(ds, tmp_path / "a", cfg, rows_per_shard=2, progress=False)
    assert sliced.shards == 3 and sliced.count == 6
    assert sorted(p.name for p in (tmp_path / "a" / "data").iterdir()) == [
        f"train-0000{i}-of-00003.parquet" for i in range(3)]
    back = datasets.load_dataset(str(tmp_path / "a"), split="train")  # the Hub's layout; .udp/ is ignored
    assert back.features == features and back["n"] == list(range(6))
    streamed = run_shards(ds.to_iterable_dataset(num_shards=3), tmp_path / "b", cfg, progress=False)
    assert streamed.shards == 3 and streamed.count == 6
    again = datasets.load_dataset("parquet", data_dir=str(tmp_path / "b" / "data"), split="train")
    one = back.cast_column("image", datasets.Image(decode=False))["image"]
    two = again.cast_column("image", datasets.Image(decode=False))["image"]
    assert [v["bytes"] for v in one] == [v["bytes"] for v in two]  # keyed by pixels: slicing does not matter


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.mark.skipif(importlib.util.find_spec("aiohttp") is None, reason="fsspec opens http:// URLs with aiohttp")
def test_url_sources(wds_shards, tmp_path, cfg):
    root = wds_shards[0].parent
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        url = f"http://127.0.0.1:{port}/data-{{000000..000001}}.tar"
        shards = discover_shards(url)
        assert [s.name for s in shards] == ["data-000000.tar", "data-000001.tar"] and looks_like_shards(url)
        spec = f"{url}::pipe:cat {wds_shards[2]}"
        summary = run_shards(spec, tmp_path / "web", cfg, progress=False)
        assert summary.shards == 3 and summary.count == 15
    finally:
        server.shutdown()
    run_shards(f"file://{root}", tmp_path / "local", cfg, progress=False)
    for shard in wds_shards:
        assert (tmp_path / "web" / shard.name).read_bytes() == (tmp_path / "local" / shard.name).read_bytes()


def test_pipe_sources_are_streams_whose_command_must_succeed(tmp_path):
    """``pipe:CMD`` (the one opener besides fsspec and local files) reads a command's output and
    fails on its exit status; Parquet, which needs random access, refuses it."""
    from udp_datasets.sources.remote import open_binary

    (tmp_path / "x.tar").write_bytes(b"abc")
    fh = open_binary(f"pipe:cat {tmp_path / 'x.tar'}")
    assert fh.read() == b"abc"
    fh.close()
    fh = open_binary("pipe:exit 3")
    fh.read()
    with pytest.raises(OSError, match="status 3"):
        fh.close()
    with pytest.raises(SourceError, match="stream"):
        open_binary(f"pipe:cat {tmp_path / 'x.tar'}", seekable=True)


def test_discovery_rules(tmp_path, photos32):
    (tmp_path / "a" / "sub").mkdir(parents=True)
    (tmp_path / "a" / ".hidden").mkdir()
    for rel in ("x.tar", "sub/y.tar", ".hidden/z.tar", "sub/p.parquet", "notes.txt"):
        (tmp_path / "a" / rel).write_bytes(b"")
    assert [(s.name, s.kind) for s in discover_shards(str(tmp_path / "a"))] == [
        ("sub/p.parquet", "parquet"), ("sub/y.tar", "tar"), ("x.tar", "tar")]
    assert [s.name for s in discover_shards(str(tmp_path / "a" / "*.tar"))] == ["x.tar"]
    assert looks_like_shards(str(tmp_path / "a")) and looks_like_shards("s3://b/d-{0..3}.tar")
    (tmp_path / "b" / "c").mkdir(parents=True)
    (tmp_path / "b" / "x.tar").write_bytes(b"")
    (tmp_path / "b" / "c" / "x.tar").write_bytes(b"")
    with pytest.raises(SourceError, match="both be written"):
        discover_shards([str(tmp_path / "b" / "x.tar"), str(tmp_path / "b" / "c" / "x.tar")])
    with pytest.raises(SourceError, match="does not exist"):
        discover_shards(str(tmp_path / "nope-{0..2}.tar"))
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    Image.fromarray(photos32[0]).save(pictures / "pic.png")
    assert not looks_like_shards(str(pictures)) and not looks_like_shards("user/dataset")
