"""The hostile-input corpus (tests/hostile.py) through every path it can reach (issue 13).

Paths: ``Protector.protect_images``, ``protector.map(ds)``, plain ``ds.map(protector)``, a streamed
``IterableDataset``, the CLI on an image folder (Arrow and ``--format imagefolder``), on Parquet and
tar shards, the shard job on ``datasets`` slices and streams, ``verify`` and ``publish`` (against
the local Hub in tests/hub_server.py). Each case must end as the README's "Bad input" table says:
protected (in the mode the table names) or quarantined with its reason, never a traceback, and a
path inside data is never opened outside a local source's own folder.

Every CLI job runs once per module (module-scoped fixtures) with 2 PGD steps on tiny images.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import hostile
from conftest import TINY
from hub_server import local_hub  # noqa: F401  (a fixture)
from hostile import BYTE, BYTE_CASES, PATH_ONLY
from udp_datasets import Protector
from udp_datasets.cli.app import EXIT_FAILED, EXIT_OK, EXIT_QUARANTINED, EXIT_USAGE, main
from udp_datasets.images import PATH_ONLY_REASON, FailedImage, ImageError, ProtectedImage
from udp_datasets.records.manifest import read_manifest
from udp_datasets.jobs.shard_job import run_shards
from udp_datasets.sources.paths import read_image_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROTECTED = [c.name for c in BYTE_CASES if c.protected]
QUARANTINED = [c.name for c in BYTE_CASES if not c.protected]


@pytest.fixture(scope="module")
def cfg(unlearnable_surrogate):
    return TINY.replace(surrogate=unlearnable_surrogate, steps=2, batch_size=8)


@pytest.fixture(scope="module")
def flags(unlearnable_surrogate):
    return ["--surrogate", unlearnable_surrogate, "--resolution", "16", "--steps", "2", "--batch-size", "8"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A private picture (what hostile paths point at), and a local source folder beside it."""
    base = tmp_path_factory.mktemp("hostile")
    secret = hostile.secret_file(base / "private")
    return {"base": base, "secret": secret, "secret_bytes": secret.read_bytes()}


def _path_only(world) -> dict[str, dict]:
    return hostile.path_only_entries(world["secret"])


def _errors(path: Path) -> dict[str, dict]:
    """errors.jsonl as {key: record}."""
    return {r["key"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines()) if r}


def _assert_reason(name: str, reason: str) -> None:
    assert "object at 0x" not in reason, reason  # issue 13 item 10
    if name in BYTE:
        assert re.search(BYTE[name].reason, reason), (name, reason)
    else:
        assert reason.startswith(PATH_ONLY_REASON), (name, reason)


def _decoded_mode(png: bytes) -> tuple[str, tuple[int, int], bytes | None]:
    with Image.open(io.BytesIO(png)) as im:
        return im.mode, im.size, im.info.get("icc_profile")


def _check_protected_output(name: str, png: bytes) -> None:
    mode, size, icc = _decoded_mode(png)
    assert mode == BYTE[name].mode, (name, mode)
    if name == "exif_rotated":
        assert size == (hostile.H, hostile.W)  # the orientation was applied before protection
    if name == "icc_profile":
        assert icc  # the colour profile travels with the pixels


# ------------------------------------------------------------------------- the Python API
def test_protect_images_corpus(cfg, world, tmp_path):
    entries = {c.name: c.make() for c in BYTE_CASES} | _path_only(world) | {"none": None}
    protector = Protector(cfg, progress=False)
    results = dict(zip(entries, protector.protect_images(list(entries.values()), names=list(entries))))
    for name, result in results.items():
        if name in PROTECTED:
            assert isinstance(result, ProtectedImage), (name, result)
            assert 1 <= result.linf <= cfg.budget_levels
            _check_protected_output(name, result.png)
        else:
            assert isinstance(result, FailedImage), name
            assert result.key == name
            if name == "none":
                assert "missing" in result.reason
            else:
                _assert_reason(name, result.reason)
    # the reason never tells whether the path exists
    assert len({results[n].reason for n in _path_only(world)}) == 1
    # a caller's own file path in a plain list is theirs to open; inside image_root an entry is read too
    root = Protector(cfg, progress=False, image_root=world["secret"].parent)
    got = root.protect_images([str(world["secret"]), _path_only(world)["path_only_existing"],
                               _path_only(world)["path_only_escape"]])
    assert [type(r) for r in got] == [ProtectedImage, ProtectedImage, ProtectedImage]


def test_image_root_refuses_escapes_and_symlinks_out(world, tmp_path):
    root = tmp_path / "source"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "ok.png").write_bytes(BYTE["rgb"].make())
    (root / "link.png").symlink_to(world["secret"])
    assert read_image_path("sub/ok.png", root=root, missing_ok=False) == BYTE["rgb"].make()
    assert read_image_path(str(root / "sub" / ".." / "sub" / "ok.png"), root=root, missing_ok=True)
    for hostile_path in (str(world["secret"]), os.path.relpath(world["secret"], root), "../" * 12 + "etc/passwd",
                         str(root / "link.png"), "link.png", str(root / "sub" / "missing.png")):
        assert read_image_path(hostile_path, root=root, missing_ok=True) is None, hostile_path
        assert read_image_path(hostile_path, root=None, missing_ok=True) is None
    with pytest.raises(ImageError, match=PATH_ONLY):
        read_image_path(str(world["secret"]), root=None, missing_ok=False)


def _corpus_dataset(world) -> datasets.Dataset:
    rows = [(c.name, {"bytes": c.make(), "path": f"{c.name}.{c.suffix}"}) for c in BYTE_CASES]
    rows += list(_path_only(world).items()) + [("none", None)]
    ds = datasets.Dataset.from_dict({"id": [r[0] for r in rows], "image": [r[1] for r in rows]})
    return ds.cast_column("image", datasets.Image())


def _check_mapped(out, errors_file: Path, world, names: list[str]) -> None:
    assert out["id"] == PROTECTED
    raw = out.cast_column("image", datasets.Image(decode=False))
    for name, value in zip(raw["id"], raw["image"]):
        _check_protected_output(name, value["bytes"])
        assert value["bytes"] != world["secret_bytes"]
    records = _errors(errors_file)
    assert sorted(records) == sorted(n for n in names if n not in PROTECTED)
    for name, record in records.items():
        assert record["index"] == names.index(name)  # the dataset's row (item 7), not the batch position
        if name != "none":
            _assert_reason(name, record["reason"])


@pytest.mark.parametrize("how", ["protector.map", "ds.map"])
def test_datasets_map_corpus(cfg, world, tmp_path, how):
    """``protector.map`` and plain ``ds.map(protector)`` (a decoding Image column: the protector
    takes the column as stored, so datasets' decoder never sees a corrupt file or a path)."""
    ds = _corpus_dataset(world)
    errors = tmp_path / "errors.jsonl"
    protector = Protector(cfg, key_column="id", errors="quarantine", errors_file=errors, progress=False)
    if how == "protector.map":
        out = protector.map(ds, batch_size=4)
    else:
        out = ds.map(protector, batched=True, batch_size=4, with_indices=True, load_from_cache_file=False)
    _check_mapped(out, errors, world, ds["id"])


def test_plain_ds_map_names_the_corrupt_sample_and_never_reads_a_path(cfg, world):
    ds = _corpus_dataset(world)
    ds = ds.select([ds["id"].index("truncated_png")])
    with pytest.raises(ImageError, match=r"truncated_png\.png.*corrupt or truncated.*errors='quarantine'"):
        ds.map(Protector(cfg, progress=False), batched=True)
    secret_only = datasets.Dataset.from_dict({"image": [_path_only(world)["path_only_existing"]]})
    with pytest.raises(ImageError, match=PATH_ONLY):
        secret_only.cast_column("image", datasets.Image()).map(Protector(cfg, progress=False), batched=True)


def test_streaming_corpus(cfg, world, tmp_path):
    """A stream: ``protector.map`` (raw bytes in) quarantines every bad case; a plain
    ``IterableDataset.map`` gets images datasets already decoded, and one opened from a path is refused."""
    ds = _corpus_dataset(world)
    errors = tmp_path / "errors.jsonl"
    protector = Protector(cfg, key_column="id", errors="quarantine", errors_file=errors, progress=False)
    out = list(protector.map(ds.to_iterable_dataset(), batch_size=4).cast_column("image", datasets.Image(decode=False)))
    assert [r["id"] for r in out] == PROTECTED
    assert sorted(_errors(errors)) == sorted(set(ds["id"]) - set(PROTECTED))
    clean = ds.select([ds["id"].index("rgb"), ds["id"].index("path_only_existing")])
    plain = Protector(cfg, key_column="id", errors="quarantine", errors_file=tmp_path / "e2.jsonl", progress=False)
    stream = clean.to_iterable_dataset().map(plain, batched=True, batch_size=4,
                                             features=plain.output_features(clean.features))
    assert [r["id"] for r in stream] == ["rgb"]
    assert _errors(tmp_path / "e2.jsonl")["path_only_existing"]["reason"].startswith(PATH_ONLY_REASON)


def test_fit_refuses_path_only_entries_by_name(cfg, world):
    ds = datasets.Dataset.from_dict({"image": list(_path_only(world).values())}).cast_column("image", datasets.Image())
    with pytest.raises(ImageError, match=f"no decodable image.*{PATH_ONLY}.*image_root"):
        Protector(TINY, progress=False).fit(ds, output_dir=None)


# ------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def folder_jobs(world, flags):
    """protect on a local image folder (every byte case as a file, a symlink out, a file in a
    sub-folder), to Arrow and to an image folder, under umask 022."""
    src = world["base"] / "folder"
    (src / "sub").mkdir(parents=True)
    for case in BYTE_CASES:
        (src / f"{case.name}.{case.suffix}").write_bytes(case.make())
    (src / "sub" / "nested.png").write_bytes(BYTE["rgb"].make())
    (src / "link_out.png").symlink_to(world["secret"])  # inside the folder, pointing out of it
    for name in hostile.UNPROTECTED_FORMATS:  # formats the folder reader skips: reported, not skipped
        (src / "sub" / name).write_bytes(hostile.unprotected_format_payload(name))
    old = os.umask(0o022)
    try:
        codes = {fmt: main(["protect", str(src), str(world["base"] / f"out-{fmt}"), "--format", fmt, *flags])
                 for fmt in ("arrow", "imagefolder")}
    finally:
        os.umask(old)
    return src, codes


@pytest.mark.parametrize("fmt", ["arrow", "imagefolder"])
def test_cli_image_folder(folder_jobs, world, fmt):
    src, codes = folder_jobs
    out = world["base"] / f"out-{fmt}"
    assert codes[fmt] == EXIT_QUARANTINED
    records = _errors(out / "errors.jsonl")
    for name, (_, reason) in hostile.UNPROTECTED_FORMATS.items():
        assert re.search(reason, records.pop(f"sub/{name}")["reason"]), name
    by_name = {Path(k).name.split(".")[0]: r for k, r in records.items()}
    assert sorted(by_name) == sorted(QUARANTINED + ["link_out"])
    for name, record in by_name.items():
        _assert_reason(name if name != "link_out" else "path_only_existing", record["reason"])
    rows = read_manifest(out / "manifest.parquet").to_pylist()
    assert sorted(Path(r["source"]).name.split(".")[0] for r in rows) == sorted(PROTECTED + ["nested"])
    pngs = {r["sha256"]: Path(r["source"]).name.split(".")[0] for r in rows}
    if fmt == "arrow":
        data = datasets.load_from_disk(str(out / "data")).cast_column("image", datasets.Image(decode=False))
        images = [v["bytes"] for v in data["image"]]
    else:
        images = [p.read_bytes() for p in out.rglob("*.png")]
        assert (out / "sub" / "nested.png").is_file() and not (out / "link_out.png").exists()
    import hashlib

    for png in images:
        name = pngs[hashlib.sha256(png).hexdigest()]
        _check_protected_output(name if name != "nested" else "rgb", png)
    # item 11: the output folder and its files follow the user's umask (022 here)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in out.rglob("*") if p.is_file())
    assert main(["verify", str(out)]) == EXIT_OK


@pytest.fixture(scope="module")
def parquet_job(world, flags):
    src = world["base"] / "parquet-src"
    src.mkdir()
    names = [c.name for c in BYTE_CASES] + list(_path_only(world)) + ["none"]
    images = [{"bytes": c.make(), "path": f"/home/someone/{c.name}.{c.suffix}"} for c in BYTE_CASES]
    images += list(_path_only(world).values()) + [None]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"id": names, "image": pa.array(images, struct)}), src / "rows.parquet")
    out = world["base"] / "parquet-out"
    return names, out, main(["protect", str(src), str(out), "--key-column", "id", *flags])


def test_cli_parquet_shards(parquet_job, world):
    names, out, code = parquet_job
    assert code == EXIT_QUARANTINED
    table = pq.read_table(out / "rows.parquet").to_pylist()
    assert [r["id"] for r in table] == PROTECTED
    for row in table:
        _check_protected_output(row["id"], row["image"]["bytes"])
        assert row["image"]["path"] == f"{row['id']}.png"  # a local path is cut to its name
    records = _errors(out / ".udp" / "errors.jsonl")
    assert sorted(records) == sorted(set(names) - set(PROTECTED))
    for name, record in records.items():
        assert record["row"] == names.index(name)
        if name != "none":
            _assert_reason(name, record["reason"])
    assert main(["verify", str(out)]) == EXIT_OK


@pytest.mark.parametrize("stream", [False, True])
def test_shard_job_on_datasets_slices_and_streams(cfg, world, tmp_path, stream):
    ds = _corpus_dataset(world)
    src = ds.to_iterable_dataset() if stream else ds
    summary = run_shards(src, tmp_path / "out", cfg, key_column="id", rows_per_shard=16, progress=False)
    assert summary.count == len(PROTECTED) and summary.errors == len(ds) - len(PROTECTED)
    records = _errors(tmp_path / "out" / ".udp" / "errors.jsonl")
    for name in _path_only(world):
        assert records[name]["reason"].startswith(PATH_ONLY_REASON)
    for part in (tmp_path / "out" / "data").glob("*.parquet"):
        for row in pq.read_table(part).to_pylist():
            assert row["image"]["bytes"] != world["secret_bytes"]


@pytest.fixture(scope="module")
def tar_job(world, flags):
    src = world["base"] / "tar-src"
    src.mkdir()
    quarantined = hostile.hostile_tar(src / "shard-000.tar")
    out = world["base"] / "tar-out"
    return quarantined, out, main(["protect", str(src / "shard-000.tar"), str(out), *flags])


def test_cli_tar_shards(tar_job):
    quarantined, out, code = tar_job
    assert code == EXIT_QUARANTINED
    records = _errors(out / ".udp" / "errors.jsonl")
    assert sorted(records) == sorted(quarantined), records
    for key, pattern in quarantined.items():
        assert re.search(pattern, records[key]["reason"]), (key, records[key]["reason"])
    with tarfile.open(out / "shard-000.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert all(m.isreg() for m in members), "links, devices and FIFOs are never copied"
    assert not any(n.startswith(("/", "..")) or "/../" in n for n in names)
    assert "notes.txt" not in names and "linked.png" not in names
    assert names.count("dup.png") == 2  # duplicate keys: both samples protected, in order
    for name in PROTECTED:
        assert f"{name}.png" in names and f"{name}.txt" in names
    for name in QUARANTINED:
        assert not any(n.startswith(f"{name}.") for n in names)  # a quarantined sample leaves whole
    assert not any(n.startswith(("twin.", "pair.")) for n in names)  # colliding output names: quarantined
    for name in hostile.UNPROTECTED_FORMATS:  # never copied through
        assert not any(n.startswith(name.split(".")[0] + ".") for n in names), name
    assert "loose-no-key" not in names
    assert main(["verify", str(out)]) == EXIT_OK


def test_verify_flags_two_members_of_one_name_in_a_sample(tar_job, tmp_path, capsys):
    """An output tar whose sample holds two members of one name (what an older version wrote for
    ``K.jpg`` + ``K.jpeg``): readers keep one or fail, so verify fails and names it."""
    _, out, _ = tar_job
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    with tarfile.open(out / "shard-000.tar") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(dst / "shard-000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
            if info.name == "rgb.txt":
                hostile.add_member(tar, "rgb.png", BYTE["grey"].make())
    assert main(["verify", str(dst)]) == EXIT_FAILED
    assert "sample 'rgb' holds two members named 'rgb.png'" in capsys.readouterr().out


def test_verify_flags_an_avif_member_in_a_published_tar(tar_job, tmp_path, capsys):
    _, out, _ = tar_job
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    with tarfile.open(dst / "shard-000.tar", "a") as tar:
        hostile.add_member(tar, "late.avif", hostile.ftyp_image(b"avif"))
    assert main(["verify", str(dst)]) == EXIT_FAILED
    assert "member 'late.avif' is AVIF image data" in capsys.readouterr().out


def test_an_image_folder_of_only_unprotected_formats_is_refused(flags, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "photo.avif").write_bytes(hostile.ftyp_image(b"avif"))
    assert main(["protect", str(src), str(tmp_path / "out"), *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds no image this tool protects" in err and "photo.avif: AVIF image data" in err and "Traceback" not in err


def test_truncated_tar_is_a_failed_shard(world, flags, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    hostile.truncated_tar(src / "part-0.tar")
    with tarfile.open(src / "part-1.tar", "w") as tar:
        hostile.add_member(tar, "ok.png", BYTE["rgb"].make())
    assert main(["protect", str(src), str(tmp_path / "out"), *flags]) == EXIT_FAILED
    job = json.loads((tmp_path / "out" / ".udp" / "job.json").read_text())
    assert [f["shard"] for f in job["shards_failed"]] == ["part-0.tar"]
    assert "not a readable tar" in job["shards_failed"][0]["reason"]
    # verify of an incomplete job does not say OK (issue 20): the failed shard's samples are missing
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "out")]) == EXIT_FAILED
    assert "1 failed shard(s) (part-0.tar) whose samples are missing" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "out"), "--allow-failed-shards"]) == EXIT_OK


# ------------------------------------------------------------------ weaker findings of issue 20
@pytest.mark.parametrize("target", ["a/..", "ns/x..y@main", "ns/-x", "ns/x--y"])
def test_verify_and_publish_refuse_an_invalid_repo_id_by_name(target, tmp_path, capsys):
    assert main(["verify", target]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "nor a valid Hub dataset id" in err and "Traceback" not in err, err
    assert main(["publish", str(tmp_path), target.split("@")[0]]) == EXIT_USAGE
    assert "is not a repo id" in capsys.readouterr().err


class _Zeros:
    """A file object of ``n`` zero bytes, read in blocks (a huge member without holding it)."""

    def __init__(self, n: int):
        self.left = n

    def read(self, size: int = -1) -> bytes:
        size = self.left if size < 0 else min(size, self.left)
        self.left -= size
        return bytes(size)


def test_a_member_that_inflates_past_the_limit_is_quarantined_unread(flags, tmp_path, monkeypatch, capsys):
    """A .tar.gz member of 24 MB of zeros (a small file): over the member limit (lowered to 1 MiB
    here, 1 GiB by default) it is skipped unread and its sample quarantined, never a MemoryError."""
    import udp_datasets.formats.webdataset as tar_source

    monkeypatch.setattr(tar_source, "MAX_MEMBER_BYTES", 1 << 20)
    src = tmp_path / "bomb.tar.gz"
    with tarfile.open(src, "w:gz") as tar:
        hostile.add_member(tar, "ok.png", BYTE["rgb"].make())
        hostile.add_member(tar, "big.png", BYTE["rgb"].make())
        info = tarfile.TarInfo("big.bin")
        info.size = 24 << 20
        tar.addfile(info, _Zeros(info.size))
    assert src.stat().st_size < 1 << 20
    out = tmp_path / "out"
    assert main(["protect", str(src), str(out), *flags]) == EXIT_QUARANTINED
    record = _errors(out / ".udp" / "errors.jsonl")["big"]
    assert "'big.bin' is 25,165,824 bytes, more than the 1,048,576 a member may hold" in record["reason"]
    with tarfile.open(out / "bomb.tar.gz") as tar:
        assert tar.getnames() == ["ok.png"]


def test_an_image_folder_holding_a_tar_is_refused(flags, tmp_path, capsys):
    src = tmp_path / "src"
    (src / "more").mkdir(parents=True)
    (src / "a.png").write_bytes(BYTE["rgb"].make())
    with tarfile.open(src / "more" / "s.tar", "w") as tar:
        hostile.add_member(tar, "b.png", BYTE["rgb"].make())
    assert main(["protect", str(src), str(tmp_path / "out"), *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "holds shard files (more/s.tar) and image files (a.png)" in err and "Traceback" not in err, err


def test_an_image_struct_whose_bytes_field_is_not_binary_is_named(flags, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    struct = pa.struct([("bytes", pa.string()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": "iVBORw0KGgo=", "path": "a.png"}], struct)}),
                   src / "rows.parquet")
    assert main(["protect", str(src), str(tmp_path / "out"), *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "image column 'image' is a struct whose 'bytes' field has type string; it must be binary" in err, err


# ---------------------------------------------------------------- a second image column (issue 20 item 2)
SECOND_COLUMN = r"image column\(s\) \['thumb'\] besides 'image'.*--drop-columns thumb"


@pytest.mark.parametrize("kind", ["features", "struct", "list"])
def test_parquet_with_a_second_image_column_is_refused_or_dropped(kind, flags, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(hostile.two_image_columns_table(kind), src / "rows.parquet")
    assert main(["protect", str(src), str(tmp_path / "out"), "--key-column", "id", *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert re.search(SECOND_COLUMN, err) and "Traceback" not in err, err
    assert not (tmp_path / "out" / "rows.parquet").exists()
    out = tmp_path / "dropped"
    assert main(["protect", str(src), str(out), "--key-column", "id", "--drop-columns", "thumb", *flags]) == EXIT_OK
    table = pq.read_table(out / "rows.parquet")
    assert table.column_names == ["id", "image"]
    if kind == "features":  # the Hugging Face features follow the dropped column
        assert datasets.load_dataset("parquet", data_files=str(out / "rows.parquet"), split="train").features == \
            datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
    assert main(["verify", str(out)]) == EXIT_OK
    # a hand-made output that kept the column fails verify
    pq.write_table(pq.read_table(src / "rows.parquet"), out / "rows.parquet")
    assert main(["verify", str(out)]) == EXIT_FAILED
    assert "besides 'image', the protected one" in capsys.readouterr().out


@pytest.mark.parametrize("drop, message", [("nosuch", r"cannot drop \['nosuch'\]: no such column"),
                                           ("image", r"'image' is the image column to protect; it cannot be dropped")])
def test_drop_columns_misuse_is_a_usage_error(drop, message, flags, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(hostile.two_image_columns_table("struct"), src / "rows.parquet")
    assert main(["protect", str(src), str(tmp_path / "out"), "--drop-columns", drop, *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err, err


def test_pipeline_with_a_second_image_column(cfg, tmp_path, capsys):
    """The ready Parquet pipeline: refused (exit 2) naming the column; ``drop_columns`` leaves it out."""
    from udp_datasets.cli.pipelines import run_pipeline

    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(hostile.two_image_columns_table("struct"), src / "rows.parquet")
    argv = ["--config", str(Path(__file__).resolve().parent.parent / "pipelines" / "parquet.yaml"),
            "--set", f"source={src}", "--set", f"destination={tmp_path / 'out'}", "--set", "key_column=id",
            "--set", f"protection.surrogate={cfg.surrogate}", "--set", "protection.steps=2",
            "--set", "protection.resolution=16"]
    assert run_pipeline("parquet", argv) == EXIT_USAGE
    assert re.search(SECOND_COLUMN, capsys.readouterr().err)
    assert run_pipeline("parquet", [*argv, "--set", "drop_columns=thumb"]) == EXIT_OK
    assert pq.read_table(tmp_path / "out" / "rows.parquet").column_names == ["id", "image"]


@pytest.mark.parametrize("kind", ["binary", "base64", "nested"])
def test_a_cell_holding_an_image_quarantines_its_row(kind, cfg, flags, tmp_path, capsys):
    """Image bytes in a plain binary cell, or base64 / a data URI in a string cell: that row is
    quarantined (shard path); a dataset holding one is refused naming the row (datasets path)."""
    src = tmp_path / "src"
    src.mkdir()
    table = hostile.two_image_columns_table(kind)
    pq.write_table(table, src / "rows.parquet")
    out = tmp_path / "out"
    assert main(["protect", str(src), str(out), "--key-column", "id", *flags]) == EXIT_QUARANTINED
    kept = ["a"] if kind == "base64" else ["a", "c"]
    assert [r["id"] for r in pq.read_table(out / "rows.parquet").to_pylist()] == kept
    records = _errors(out / ".udp" / "errors.jsonl")
    assert sorted(records) == sorted({"a", "b", "c"} - set(kept))
    fmt = "PNG (base64)" if kind == "base64" else "PNG"
    assert f"column 'thumb' holds a {fmt} image that would be copied unprotected" in records["b"]["reason"]
    assert records["b"]["row"] == 1
    from udp_datasets.sources import SourceError

    ds = datasets.Dataset(table).cast_column("image", datasets.Image())
    with pytest.raises(SourceError, match=f"row 1: column 'thumb' holds a {re.escape(fmt)} image"):
        Protector(cfg, progress=False).map(ds)
    assert main(["protect", str(src), str(out), "--key-column", "id", "--drop-columns", "thumb", "--overwrite",
                 *flags]) == EXIT_OK
    assert main(["verify", str(out)]) == EXIT_OK
    protected = pq.read_table(out / "rows.parquet")  # a hand-made output with the cells put back: verify fails
    pq.write_table(protected.append_column("thumb", table.column("thumb")), out / "rows.parquet")
    capsys.readouterr()
    assert main(["verify", str(out)]) == EXIT_FAILED
    assert f"rows.parquet row 1: column 'thumb' holds a {fmt} image" in capsys.readouterr().out


def test_datasets_with_a_second_image_column(cfg, flags, tmp_path, capsys):
    """The Arrow / datasets paths: the CLI, ``Protector.map``, plain ``ds.map(protector)`` and the
    shard job on a ``Dataset`` all refuse, naming the column; ``--drop-columns`` leaves it out."""
    table = hostile.two_image_columns_table("features")
    ds = datasets.Dataset(table).cast_column("image", datasets.Image()).cast_column("thumb", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    assert main(["protect", str(tmp_path / "saved"), str(tmp_path / "out"), *flags]) == EXIT_USAGE
    assert re.search(SECOND_COLUMN, capsys.readouterr().err)
    assert main(["protect", str(tmp_path / "saved"), str(tmp_path / "out"), "--drop-columns", "thumb", *flags]) == EXIT_OK
    assert datasets.load_from_disk(str(tmp_path / "out" / "data")).column_names == ["id", "image"]
    from udp_datasets.sources import SourceError

    protector = Protector(cfg, progress=False)
    with pytest.raises(SourceError, match=SECOND_COLUMN):
        protector.map(ds)
    with pytest.raises(SourceError, match=r"image column\(s\) \['thumb'\] besides 'image'"):
        ds.map(protector, batched=True, load_from_cache_file=False)
    with pytest.raises(SourceError, match=SECOND_COLUMN):  # a stream too, by its features
        protector.map(ds.to_iterable_dataset())
    with pytest.raises(SourceError, match=r"image column\(s\) \['thumb'\] besides 'image'"):  # decoded values
        list(ds.to_iterable_dataset().map(protector, batched=True))
    with pytest.raises(SourceError, match=SECOND_COLUMN):
        run_shards(ds, tmp_path / "runner", cfg, progress=False)
    summary = run_shards(ds, tmp_path / "runner", cfg, progress=False, drop_columns=["thumb"])
    assert summary.count == 3 and pq.read_table(next((tmp_path / "runner" / "data").glob("*.parquet"))).column_names == ["id", "image"]


# ---------------------------------------------------------------------------------- verify
def _hostile_published(parquet_job, world, tmp_path) -> Path:
    """A published Parquet folder with one extra row that names the secret by path only, and a
    manifest row that claims it: a verifier that opened the path would call it verified."""
    import hashlib

    _, out, _ = parquet_job
    dst = tmp_path / "published"
    shutil.copytree(out, dst)
    table = pq.read_table(dst / "rows.parquet")
    row = {**table.slice(0, 1).to_pylist()[0], "id": "planted", "image": {"bytes": None, "path": str(world["secret"])}}
    pq.write_table(pa.concat_tables([table, pa.Table.from_pylist([row], schema=table.schema)]), dst / "rows.parquet")
    manifest = pq.read_table(dst / ".udp" / "manifest.parquet")
    extra = {**manifest.slice(0, 1).to_pylist()[0], "key": "planted",
             "sha256": hashlib.sha256(world["secret_bytes"]).hexdigest()}
    pq.write_table(pa.concat_tables([manifest, pa.Table.from_pylist([extra], schema=manifest.schema)]),
                   dst / ".udp" / "manifest.parquet")
    return dst


def test_verify_never_reads_a_published_path(parquet_job, world, tmp_path, capsys):
    from udp_datasets.publish.verify import verify_directory

    dst = _hostile_published(parquet_job, world, tmp_path)
    report = verify_directory(dst)
    assert not report.ok and report.verified == len(PROTECTED)
    assert report.keys("altered") == ["planted"] and "unreadable" in report.findings["altered"][0].detail
    assert main(["verify", str(dst)]) == EXIT_FAILED


@pytest.mark.parametrize("content", [b"", b"PAR1 not really parquet PAR1", "empty-table"])
def test_verify_reports_an_empty_or_corrupt_manifest(parquet_job, tmp_path, capsys, content):
    _, out, _ = parquet_job
    dst = tmp_path / "copy"
    shutil.copytree(out, dst)
    manifest = dst / ".udp" / "manifest.parquet"
    if content == "empty-table":
        pq.write_table(pa.table({"nothing": pa.array([], pa.int32())}), manifest)
    else:
        manifest.write_bytes(content)
    assert main(["verify", str(dst)]) == EXIT_FAILED
    assert "manifest cannot be read" in capsys.readouterr().out


# ------------------------------------------------- a manifest edited to match an unprotected image (item 4)
def _unprotected_reencode(png: bytes) -> bytes:
    """The same pixels in other PNG bytes: an unprotected image whose SHA-256 is no source file's."""
    with Image.open(io.BytesIO(png)) as im:
        return hostile.encode(im.copy(), compress_level=1, optimize=False)


def _plant(dst: Path, manifest: Path, record: Path | None, match, replace) -> None:
    """Edit the manifest row that ``match``es to claim the bytes ``replace`` wrote; with
    ``record``, rewrite the job record's digest too (a forger who rewrites both)."""
    import hashlib

    from udp_datasets.records.manifest import manifest_digest

    new = replace()
    rows = pq.read_table(manifest).to_pylist()
    for row in rows:
        if match(row):
            row["sha256"] = hashlib.sha256(new).hexdigest()
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(manifest)), manifest)
    if record is not None:
        job = json.loads(record.read_text())
        job["manifest_sha256"] = manifest_digest(manifest)
        record.write_text(json.dumps(job))


@pytest.mark.parametrize("forge_record", [False, True])
def test_verify_fails_an_unprotected_image_whatever_the_manifest_says(folder_jobs, world, tmp_path, capsys,
                                                                      forge_record):
    """Issue 20 item 4: one protected image replaced by its source pixels (other PNG bytes), its
    manifest row edited to match. The digest shows the edit; a forger who rewrites the record's
    digest too is still caught: the image's pixels hash to its own manifest key (its source)."""
    dst = tmp_path / "published"
    shutil.copytree(world["base"] / "out-imagefolder", dst)
    source_png = (world["base"] / "folder" / "rgb.png").read_bytes()

    def replace() -> bytes:
        data = _unprotected_reencode(source_png)
        (dst / "rgb.png").write_bytes(data)
        return data

    _plant(dst, dst / "manifest.parquet", dst / "udp_protection.json" if forge_record else None,
           lambda row: row["source"] == "rgb.png", replace)
    assert main(["verify", str(dst)]) == EXIT_FAILED
    out = capsys.readouterr().out
    assert "unprotected" in out and "whatever the manifest row says" in out, out
    assert ("differs from the" in out) is (not forge_record), out


def test_verify_with_source_fails_an_unprotected_image_of_a_keyed_job(parquet_job, world, tmp_path, capsys):
    """A key-column job (manifest keys are ids, not pixel hashes): the manifest and the record's
    digest both forged; ``--source`` measures the image against its source and fails it."""
    _, out, _ = parquet_job
    dst = tmp_path / "published"
    shutil.copytree(out, dst)
    rgb = BYTE["rgb"].make()

    def replace() -> bytes:
        data = _unprotected_reencode(rgb)
        table = pq.read_table(dst / "rows.parquet")
        rows = table.to_pylist()
        rows[[r["id"] for r in rows].index("rgb")]["image"]["bytes"] = data
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), dst / "rows.parquet")
        return data

    _plant(dst, dst / ".udp" / "manifest.parquet", dst / ".udp" / "job.json", lambda row: row["key"] == "rgb", replace)
    assert main(["verify", str(dst), "--source", str(world["base"] / "parquet-src")]) == EXIT_FAILED
    assert re.search(r"unprotected.*\n.*- rgb .*pixels identical to the source", capsys.readouterr().out)


def test_job_records_and_card_carry_the_manifest_digest(folder_jobs, tar_job, world):
    from udp_datasets.records.manifest import manifest_digest

    _, tar_out, _ = tar_job
    for record, manifest in ((world["base"] / "out-arrow" / "udp_protection.json", world["base"] / "out-arrow" / "manifest.parquet"),
                             (tar_out / ".udp" / "job.json", tar_out / ".udp" / "manifest.parquet")):
        assert json.loads(record.read_text())["manifest_sha256"] == manifest_digest(manifest)


def test_sign_key_signs_the_record_and_verify_checks_it(flags, tmp_path, capsys):
    """``protect --sign-key`` adds an HMAC-SHA256 of the manifest digest (and config hash, budget,
    source, count) to the record; ``verify --sign-key`` fails a forged digest, another key, an
    unsigned record; an unusable key file is refused before any work (exit 2)."""
    from udp_datasets.records.manifest import manifest_digest

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(BYTE["rgb"].make())
    key, other, short = tmp_path / "key", tmp_path / "other", tmp_path / "short"
    key.write_bytes(os.urandom(32))
    other.write_bytes(os.urandom(32))
    short.write_bytes(b"abc")
    out = tmp_path / "out"
    for bad, message in ((tmp_path / "missing", "cannot read the key file"), (short, "at least 16")):
        assert main(["protect", str(src), str(out), "--sign-key", str(bad), *flags]) == EXIT_USAGE
        assert message in capsys.readouterr().err and not out.exists()
        assert main(["verify", str(src), "--sign-key", str(bad)]) == EXIT_USAGE
        assert message in capsys.readouterr().err
    assert main(["protect", str(src), str(out), "--sign-key", str(key), *flags]) == EXIT_OK
    record = json.loads((out / "udp_protection.json").read_text())
    assert record["manifest_signature"].startswith("hmac-sha256:")
    assert main(["verify", str(out), "--sign-key", str(key)]) == EXIT_OK
    assert main(["verify", str(out)]) == EXIT_OK  # no key: the digest is checked, the signature cannot be
    capsys.readouterr()
    assert main(["verify", str(out), "--sign-key", str(other)]) == EXIT_FAILED
    assert "signature does not match" in capsys.readouterr().out
    # a forger edits the manifest and the record's digest, but cannot sign without the key
    rows = pq.read_table(out / "manifest.parquet")
    pq.write_table(rows.set_column(rows.schema.get_field_index("psnr"), "psnr", pa.array([99.0], pa.float64())),
                   out / "manifest.parquet")
    record["manifest_sha256"] = manifest_digest(out / "manifest.parquet")
    (out / "udp_protection.json").write_text(json.dumps(record))
    assert main(["verify", str(out)]) == EXIT_OK  # what the digest alone cannot tell (README says so)
    assert main(["verify", str(out), "--sign-key", str(key)]) == EXIT_FAILED
    assert "signature does not match" in capsys.readouterr().out
    del record["manifest_signature"]
    (out / "udp_protection.json").write_text(json.dumps(record))
    assert main(["verify", str(out), "--sign-key", str(key)]) == EXIT_FAILED
    assert "is not signed" in capsys.readouterr().out


# --------------------------------------------------------------------------------- publish
def test_publish_refuses_hostile_and_incomplete_jobs(parquet_job, tar_job, world, flags, tmp_path,
                                                     local_hub):  # noqa: F811
    from test_publish import client

    planted = _hostile_published(parquet_job, world, tmp_path)
    failed = tmp_path / "failed-src"
    failed.mkdir()
    hostile.truncated_tar(failed / "part-0.tar")
    shutil.copy(world["base"] / "tar-src" / "shard-000.tar", failed / "part-1.tar")
    assert main(["protect", str(failed), str(tmp_path / "failed-out"), *flags]) == EXIT_FAILED
    _, tar_out, _ = tar_job
    result, printed = client(local_hub, f"""
codes = [main(["publish", {str(planted)!r}, "test-user/planted"]),
         main(["publish", {str(tmp_path / "failed-out")!r}, "test-user/partial"]),
         main(["publish", {str(tmp_path / "failed-out")!r}, "test-user/partial", "--allow-failed-shards"]),
         main(["publish", {str(tar_out)!r}, "test-user/hostile-tar"]),
         main(["verify", "test-user/hostile-tar"])]
emit({{"codes": codes}})
""", tmp_path / "client")
    assert result["codes"] == [EXIT_FAILED, EXIT_FAILED, EXIT_OK, EXIT_OK, EXIT_OK], printed[-4000:]
    assert "failed shard(s) (part-0.tar)" in printed and "--allow-failed-shards" in printed
    assert not any("planted" in r.path for r in local_hub.requests)  # refused before any request for it
    card = local_hub.read_file("test-user/partial", "README.md").decode()
    assert "## Missing data" in card and "`part-0.tar`" in card and "not a readable tar" in card
    assert "shards_missing" in card
    assert "manifest_sha256: " + json.loads((tmp_path / "failed-out" / ".udp" / "job.json").read_text())["manifest_sha256"] in card
    files = local_hub.list_files("test-user/hostile-tar")
    assert "shard-000.tar" in files
    with tarfile.open(fileobj=io.BytesIO(local_hub.read_file("test-user/hostile-tar", "shard-000.tar"))) as tar:
        assert all(m.isreg() and not m.name.startswith(("/", "..")) for m in tar.getmembers())
    stored = b"".join(p.read_bytes() for p in Path(local_hub.storage_dir).rglob("*") if p.is_file())
    assert world["secret_bytes"] not in stored


def test_publish_refuses_the_new_hostile_outputs(tar_job, folder_jobs, world, flags, tmp_path,
                                                 local_hub):  # noqa: F811
    """Issue 20 through publish on the local Hub: an output tar holding an AVIF member, a Parquet
    output that kept a second image column, and an image folder whose manifest was edited are
    refused (exit 1) before any request for them; ``--sign-key`` passes through to the check."""
    from test_publish import client

    _, tar_out, _ = tar_job
    avif = tmp_path / "avif"
    shutil.copytree(tar_out, avif)
    with tarfile.open(avif / "shard-000.tar", "a") as tar:
        hostile.add_member(tar, "late.avif", hostile.ftyp_image(b"avif"))
    twins = tmp_path / "twins"  # a sample with two members of one name, as an older version wrote K.jpg + K.jpeg
    shutil.copytree(tar_out, twins)
    with tarfile.open(twins / "shard-000.tar", "a") as tar:
        hostile.add_member(tar, "late.png", BYTE["rgb"].make())
        hostile.add_member(tar, "late.png", BYTE["grey"].make())
    columns = tmp_path / "columns"
    columns.mkdir()
    pq.write_table(hostile.two_image_columns_table("features"), columns / "rows.parquet")
    kept = tmp_path / "kept-column"
    assert main(["protect", str(columns), str(kept), "--key-column", "id", "--drop-columns", "thumb", *flags]) == EXIT_OK
    pq.write_table(pq.read_table(columns / "rows.parquet"), kept / "rows.parquet")  # the thumbs back, unprotected
    edited = tmp_path / "edited"
    shutil.copytree(world["base"] / "out-imagefolder", edited)
    rows = pq.read_table(edited / "manifest.parquet")
    pq.write_table(rows.set_column(rows.schema.get_field_index("psnr"), "psnr",
                                   pa.array([1.0] * rows.num_rows, pa.float64())), edited / "manifest.parquet")
    key = tmp_path / "key"
    key.write_bytes(os.urandom(32))
    result, printed = client(local_hub, f"""
codes = [main(["publish", {str(avif)!r}, "test-user/avif"]),
         main(["publish", {str(twins)!r}, "test-user/twins"]),
         main(["publish", {str(edited)!r}, "test-user/edited"]),
         main(["publish", {str(kept)!r}, "test-user/kept"]),
         main(["publish", {str(world["base"] / "out-imagefolder")!r}, "test-user/unsigned", "--sign-key", {str(key)!r}])]
emit({{"codes": codes}})
""", tmp_path / "client")
    assert result["codes"] == [EXIT_FAILED] * 5, printed[-4000:]
    assert "sample 'late' holds two members named 'late.png'" in printed
    assert "'late.avif' is AVIF image data" in printed and "differs from the" in printed and "is not signed" in printed
    assert "['thumb'] besides 'image', the protected one" in printed
    assert not any(repo in r.path for r in local_hub.requests for repo in ("avif", "twins", "edited", "kept", "unsigned"))


# -------------------------------------------------------------------- configs and weights
BAD_CONFIGS = {
    "gamma.yaml": ("gamma: high\n", "gamma='high'.*must be a number"),
    "epsilon.yaml": ("epsilon: true\n", "a bool is not a budget"),
    "beta.yaml": ("beta_schedule: bogus\n", "beta_schedule='bogus' is not one of"),
    "device.yaml": ("device: tpu:7\n", "device='tpu:7' is not a device"),
    "steps.json": ('{"steps": "40"}', "steps='40'.*must be a whole number"),
    "seed.json": ('{"seed": 1.5}', "seed=1.5.*whole number"),
    "surrogate.json": ('{"surrogate": 7}', "surrogate=7.*a string or null"),
    "random_start.json": ('{"random_start": "yes"}', "random_start='yes'.*true or false"),
    "malformed.json": ('{"steps": 40,,}', "not valid JSON"),
    "list.json": ("[1, 2]", "expected a mapping"),
    "unknown.yaml": ("stepz: 4\n", "unknown config field"),
    "python.yaml": ("steps: !!python/object/apply:os.system ['touch {marker}']\n", "not plain YAML.*nothing is executed"),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_is_a_config_error_naming_the_field(name, tmp_path, capsys):
    text, message = BAD_CONFIGS[name]
    marker = tmp_path / "executed"
    path = tmp_path / name
    path.write_text(text.replace("{marker}", str(marker)))
    assert main(["config", "--config-file", str(path)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists()


def test_a_config_value_the_shard_job_refuses_is_a_usage_error(flags, tmp_path, capsys):
    """``config`` accepts ``caption_column``; the shard job cannot read captions yet: one line, exit 2."""
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        hostile.add_member(tar, "a.png", BYTE["rgb"].make())
    assert main(["protect", str(tmp_path / "s.tar"), str(tmp_path / "out"), "--caption-column", "text", *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "caption_column='text'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_an_empty_parquet_file_is_a_failed_shard_and_drop_columns_on_tar_is_refused(flags, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "zero.parquet").write_bytes(b"")
    pq.write_table(pa.table({"image": [BYTE["rgb"].make()]}), src / "good.parquet")
    assert main(["protect", str(src), str(tmp_path / "out"), *flags]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "Traceback" not in err
    job = json.loads((tmp_path / "out" / ".udp" / "job.json").read_text())
    assert [f["shard"] for f in job["shards_failed"]] == ["zero.parquet"]
    assert "not a readable Parquet file" in job["shards_failed"][0]["reason"]
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        hostile.add_member(tar, "a.png", BYTE["rgb"].make())
    assert main(["protect", str(tmp_path / "s.tar"), str(tmp_path / "o2"), "--drop-columns", "x", *flags]) == EXIT_USAGE
    assert "tar shards have members, not columns" in capsys.readouterr().err


def test_pickle_weights_are_refused_and_never_run(world, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = hostile.pickle_surrogate(tmp_path / "evil", marker)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(BYTE["rgb"].make())
    assert main(["protect", str(src), str(tmp_path / "out"), "--surrogate", str(evil)]) == EXIT_USAGE
    assert "safetensors" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


# ------------------------------------------------------------------- disks, kills, memory
@pytest.mark.parametrize("fmt", ["arrow", "imagefolder"])
def test_full_disk_is_one_line_and_leaves_nothing(fmt, flags, tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(BYTE["rgb"].make())

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if fmt == "arrow":
        monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    else:
        monkeypatch.setattr("udp_datasets.formats.imagefolder.Path.write_bytes", full)
    out = tmp_path / "out"
    assert main(["protect", str(src), str(out), "--format", fmt, *flags]) == EXIT_FAILED
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line.lower()]  # progress bars aside
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and str(out) in lines[0]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "udp_datasets.cli", "protect", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_sigkill_then_rerun_cleans_the_stale_temporary(flags, tmp_path):
    """Item 8: a run killed inside ``datasets.map`` leaves ``.out.tmp-PID-X``; the next run
    removes it (its owner is dead, so its lock is free) and writes the same output."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"{i:02d}.png").write_bytes(hostile.encode(Image.fromarray(hostile.gradient(24, 24, seed=i))))
    out = tmp_path / "out"
    args = [str(src), str(out), *flags, "--batch-size", "2", "--steps", "8"]
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
            time.sleep(1.0)  # inside datasets.map by now
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert stale and not out.exists(), "the run must be killed part-way"
    # a live run's temporary is never touched: hold one the way a running job does
    from udp_datasets.sinks.atomic import _hold, remove_stale_temporaries, temp_sibling

    live = temp_sibling(out)
    live.mkdir()
    fd = _hold(live)
    try:
        rerun = subprocess.run(_cli(*args), env=_env(), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == EXIT_OK, rerun.stderr[-3000:]
        assert live.is_dir() and not any(p.exists() for p in stale)
    finally:
        os.close(fd)
    assert remove_stale_temporaries(out) == [live]
    reference = tmp_path / "reference"
    assert main(["protect", *[str(reference) if a == str(out) else a for a in args]]) == EXIT_OK
    rows = lambda d: sorted((r["source"], r["sha256"]) for r in read_manifest(d / "manifest.parquet").to_pylist())  # noqa: E731
    assert rows(out) == rows(reference)


HOLD_LOCK = r"""
import sys, time
from udp_datasets.sinks.lock import destination_lock
with destination_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("path", ["folder", "tar"])
def test_one_writer_per_destination(path, flags, tmp_path, capsys):
    """Issue 20 item 5: a live run's lock refuses a second run (exit 2, naming the holder, DST
    untouched); once that run is killed (SIGKILL: no clean-up), the next run takes the lock over."""
    src = tmp_path / "src"
    src.mkdir()
    if path == "folder":
        (src / "a.png").write_bytes(BYTE["rgb"].make())
        target = str(src)
    else:
        with tarfile.open(src / "s.tar", "w") as tar:
            hostile.add_member(tar, "a.png", BYTE["rgb"].make())
        target = str(src / "s.tar")
    out = tmp_path / "out"
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path)  # another spelling of the same destination shares its lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(alias / "out")], env=_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["protect", target, str(out), *flags]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"is being written by another protect run (pid {holder.pid}" in err and "Traceback" not in err, err
        assert not out.exists() or not any(out.iterdir())
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    lock = tmp_path / ".out.udp-lock"
    assert lock.exists()  # what a killed run leaves: a file nobody holds
    assert main(["protect", target, str(out), *flags]) == EXIT_OK
    assert not lock.exists()


def test_a_busy_destination_is_refused_before_num_processes_launches(flags, tmp_path, capsys):
    from udp_datasets.sinks.lock import destination_lock

    src = tmp_path / "src"
    src.mkdir()
    with tarfile.open(src / "s.tar", "w") as tar:
        hostile.add_member(tar, "a.png", BYTE["rgb"].make())
    with destination_lock(tmp_path / "out"):
        assert main(["protect", str(src / "s.tar"), str(tmp_path / "out"), "--num-processes", "2", *flags]) == EXIT_USAGE
    assert f"is being written by another protect run (pid {os.getpid()}" in capsys.readouterr().err


def test_resume_with_other_rows_per_shard_is_refused(cfg, tmp_path, capsys):
    """A resume whose output-shaping options differ (another rows_per_shard names the Parquet
    shards otherwise) is refused like a config change; --overwrite replaces the earlier shards,
    so no row is in the output twice."""
    from udp_datasets.jobs.shard_job import ConfigMismatchError

    ds = datasets.Dataset.from_dict({"image": [{"bytes": hostile.encode(Image.fromarray(hostile.gradient(seed=i))),
                                                "path": None} for i in range(4)]}).cast_column("image", datasets.Image())
    run_shards(ds, tmp_path / "out", cfg, rows_per_shard=2, progress=False)
    with pytest.raises(ConfigMismatchError, match=r"another --rows-per-shard.*--overwrite"):
        run_shards(ds, tmp_path / "out", cfg, rows_per_shard=4, progress=False)
    ds.save_to_disk(str(tmp_path / "saved"))
    flags = ["--surrogate", cfg.surrogate, "--resolution", "16", "--steps", "2", "--format", "parquet"]
    assert main(["protect", str(tmp_path / "saved"), str(tmp_path / "out"), "--rows-per-shard", "4", *flags]) == EXIT_USAGE
    assert "another --rows-per-shard" in capsys.readouterr().err
    summary = run_shards(ds, tmp_path / "out", cfg, rows_per_shard=4, progress=False, overwrite=True)
    files = sorted(p.name for p in (tmp_path / "out" / "data").glob("*.parquet"))
    assert files == ["train-00000-of-00001.parquet"] and summary.count == 4
    assert sum(pq.read_metadata(tmp_path / "out" / "data" / f).num_rows for f in files) == 4
    assert main(["verify", str(tmp_path / "out")]) == EXIT_OK


MEMORY_SCRIPT = r"""
import json, resource, sys
import torch, diffusers, datasets  # noqa: F401  (their address space is not what the cap is about)
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
sys.path.insert(0, {tests!r})
import hostile
from udp_datasets.cli.app import main

src, out = Path({src!r}), Path({out!r})
src.mkdir()
names = [f"mp16-{{i}}" for i in range(8)] + ["strip", "small"]
images = [hostile.big_png(4096, 4096) for _ in range(8)] + [hostile.big_png(32_000_000, 1), hostile.BYTE["rgb"].make()]
pq.write_table(pa.table({{"id": names, "image": images}}), src / "rows.parquet")
print("sizes", [len(b) for b in images], flush=True)
vsz = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
cap = vsz + {headroom}
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
codes = []
for name, extra in (("budget", ["--batch-pixels", "4000000"]), ("auto", [])):
    codes.append(main(["protect", str(src), str(out / name), "--key-column", "id", *{flags!r}, *extra]))
print("RESULT " + json.dumps(codes), flush=True)
"""


@pytest.mark.slow
def test_huge_images_under_a_memory_cap_are_quarantined_by_name(flags, tmp_path):
    """Item 4: eight 16-megapixel PNGs (small files) and a 1 x 32M strip, under a 2.5 GB cap on
    the address space: with a pixel budget they are refused up front; with the automatic budget
    (which does not see the cap) an image that runs out of memory is quarantined by name."""
    script = MEMORY_SCRIPT.format(tests=str(Path(__file__).parent), src=str(tmp_path / "src"),
                                  out=str(tmp_path / "out"), flags=flags, headroom=2_500_000_000)
    proc = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    codes = json.loads(proc.stdout.split("RESULT ")[1])
    assert codes == [EXIT_QUARANTINED, EXIT_QUARANTINED], proc.stderr[-3000:]
    big = [f"mp16-{i}" for i in range(8)]
    for name in ("budget", "auto"):
        records = _errors(tmp_path / "out" / name / ".udp" / "errors.jsonl")
        kept = [r["id"] for r in pq.read_table(tmp_path / "out" / name / "rows.parquet", columns=["id"]).to_pylist()]
        assert "strip" in records and "32000000x1" in records["strip"]["reason"]
        assert "small" in kept and sorted(kept + list(records)) == sorted(big + ["strip", "small"])
        for key, record in records.items():
            assert re.search(r"pixel budget|out of memory|not enough memory", record["reason"]), record
        if name == "budget":  # refused up front, by name
            assert sorted(records) == sorted(big + ["strip"])
        else:  # the cap, not the budget, decides; one that does not fit is named (usually all of them)
            assert len(records) >= 2, records
