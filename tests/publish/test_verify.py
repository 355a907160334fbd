"""``udp-datasets verify``: re-hash a protected folder against its manifest and name every bad sample.

Real protect runs (tiny fitted surrogate, real photos saved as JPEG and grey PNG faces) are
made once per session (:func:`protected`) and copied per test; each test then damages its
copy the way things go wrong in practice and checks the exact sample keys reported.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from udp_datasets.cli.app import main
from udp_datasets.records.manifest import read_manifest, write_manifest
from udp_datasets.publish.verify import verify_directory
from udp_datasets.formats.layouts import detect_layout

_CACHE: dict[str, Path] = {}


def make_source(root: Path, photos, faces) -> Path:
    """4 real photos as JPEG in cats/, 2 grey faces as PNG in faces/ (an imagefolder source)."""
    if not root.exists():
        (root / "cats").mkdir(parents=True)
        (root / "faces").mkdir()
        for i, arr in enumerate(photos[:4]):
            Image.fromarray(arr).save(root / "cats" / f"photo{i}.jpg", quality=95)
        for i, arr in enumerate(faces[:2]):
            Image.fromarray(arr[:, :, 0], "L").save(root / "faces" / f"face{i}.png")
    return root


def protected(kind: str, base: Path, photos, faces, surrogate: str) -> tuple[Path, Path]:
    """(source, protected output) for ``kind``, made once per session (test_publish.py shares them).

    ``arrow`` / ``imagefolder``: ``protect_dataset`` on an image folder of 4 JPEG photos and
    2 grey PNG faces. ``webdataset``: the same pictures as tar shards (original bytes, plus
    ``.json`` / ``.txt`` members) protected by the shard runner; the source is the tar folder.
    """
    from conftest import TINY

    from udp_datasets.jobs.dataset_job import protect_dataset
    from udp_datasets.jobs.shard_job import run_shards

    source = make_source(base / "udp-source", photos, faces)
    config = TINY.replace(surrogate=surrogate, steps=4)
    if kind == "webdataset":
        tar_source = base / "udp-source-tars"
        if kind not in _CACHE:
            make_tar_source(source, tar_source)
            run_shards(str(tar_source), base / "udp-protected-webdataset", config)
            _CACHE[kind] = base / "udp-protected-webdataset"
        return tar_source, _CACHE[kind]
    if kind not in _CACHE:
        out = base / f"udp-protected-{kind}"
        protect_dataset(str(source), out, config, output_format=kind)
        _CACHE[kind] = out
    return source, _CACHE[kind]


def make_tar_source(source: Path, out: Path, per_shard: int = 3) -> None:
    """The image folder as WebDataset shards ``shard-0000i.tar``: ``sampleNNNN.jpg|png`` (the
    original file bytes), ``sampleNNNN.json`` and ``sampleNNNN.txt`` (the folder's label)."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    out.mkdir(parents=True)
    for start in range(0, len(files), per_shard):
        with tarfile.open(out / f"shard-{start // per_shard:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i, path in enumerate(files[start:start + per_shard], start):
                key, label = f"sample{i:04d}", path.parent.name
                _add(tar, f"{key}{path.suffix}", path.read_bytes())
                _add(tar, f"{key}.json", json.dumps({"label": label, "file": path.name}).encode())
                _add(tar, f"{key}.txt", label.encode())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr[:, :, 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr).save(buf, format="PNG")
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture()
def copy_of(tmp_path, tmp_path_factory, photos32, grey_faces, unlearnable_surrogate):
    """copy_of(kind) -> (source folder, a private copy of the protected output)."""
    def make(kind: str) -> tuple[Path, Path]:
        base = tmp_path_factory.getbasetemp()
        source, out = protected(kind, base, photos32, grey_faces, unlearnable_surrogate)
        dst = tmp_path / out.name
        shutil.copytree(out, dst)
        return source, dst
    return make


def manifest_rows(directory: Path) -> list[dict]:
    return read_manifest(directory / "manifest.parquet").to_pylist()


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", ["arrow", "imagefolder", "webdataset"])
def test_verify_untouched_outputs_pass(copy_of, kind):
    source, out = copy_of(kind)
    report = verify_directory(out)
    assert report.ok, report.format()
    assert report.layout == kind and report.found == report.expected == report.verified == 6
    assert report.budget_levels == 8 and report.config_hash
    with_source = verify_directory(out, source=str(source))
    assert with_source.ok, with_source.format()
    assert with_source.source_checked == 6 and with_source.source_unavailable == 0


def test_verify_imagefolder_names_each_damaged_sample(copy_of):
    source, out = copy_of("imagefolder")
    rows = {Path(r["source"]).with_suffix(".png").as_posix(): r["key"] for r in manifest_rows(out)}
    (out / "cats" / "photo0.png").unlink()  # missing
    altered = decode((out / "cats" / "photo1.png").read_bytes()).copy()
    altered[0, 0, 0] ^= 1  # one level in one pixel: still within budget, but not what was protected
    (out / "cats" / "photo1.png").write_bytes(png_bytes(altered))
    clean = np.asarray(Image.open(source / "faces" / "face0.png"))
    (out / "faces" / "face0.png").write_bytes(png_bytes(clean))  # the clean picture, re-encoded
    (out / "cats" / "new.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))  # extra
    report = verify_directory(out)
    assert not report.ok
    assert report.keys("missing") == [rows["cats/photo0.png"]]
    assert sorted(report.keys("altered")) == sorted([rows["cats/photo1.png"], rows["faces/face0.png"]])
    assert report.locations("extra") == ["cats/new.png"]
    assert report.keys("unprotected") == [rows["faces/face0.png"]]  # pixels hash to its source's key
    assert report.keys("over_budget") == []
    text = report.format()
    assert rows["cats/photo0.png"] in text and "cats/new.png" in text and "FAILED" in text


def test_verify_arrow_rows_align_like_a_diff_and_source_measures_budget(copy_of):
    import datasets

    source, out = copy_of("arrow")
    keys = [r["key"] for r in manifest_rows(out)]
    ds = datasets.load_from_disk(str(out / "data")).cast_column("image", datasets.Image(decode=False))
    images = [row["image"]["bytes"] for row in ds]
    noisy = decode(images[3]).astype(np.int16)
    noisy[:4, :4] = np.clip(noisy[:4, :4] + 40, 0, 255)  # far over the 8-level budget
    images[3] = png_bytes(noisy.astype(np.uint8))
    new_images = images[:1] + images[2:] + [images[0]]  # drop row 1, duplicate row 0 at the end
    labels = ds["label"]
    new = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in new_images],
                                      "label": labels[:1] + labels[2:] + labels[:1]}, features=ds.features)
    shutil.rmtree(out / "data")
    new.save_to_disk(str(out / "data"))
    report = verify_directory(out)
    assert report.keys("missing") == [keys[1]]
    assert report.keys("altered") == [keys[3]]
    assert report.locations("extra") == ["data row 5"]
    assert report.keys("over_budget") == []  # not measurable without the source
    assert report.verified == 4
    measured = verify_directory(out, source=str(source))
    assert measured.keys("over_budget") == [keys[3]]
    assert "measured L-inf" in measured.findings["over_budget"][0].detail


def test_verify_trusts_nothing_the_manifest_and_record_claim(copy_of):
    import pyarrow as pa

    _, out = copy_of("imagefolder")
    table = read_manifest(out / "manifest.parquet")
    linf = table.column("linf").to_pylist()
    linf[0], linf[1] = 9, 0
    write_manifest([table.set_column(table.schema.get_field_index("linf"), "linf", pa.array(linf, pa.int32()))],
                   out / "manifest.parquet")
    record = json.loads((out / "udp_protection.json").read_text())
    (out / "udp_protection.json").write_text(json.dumps({**record, "config_hash": "0" * 16}))
    report = verify_directory(out)
    keys = table.column("key").to_pylist()
    assert report.keys("over_budget") == [keys[0]] and report.keys("unprotected") == [keys[1]]
    assert any("config hash" in p for p in report.problems)
    (out / "manifest.parquet").unlink()
    assert any("no manifest.parquet" in p for p in verify_directory(out).problems)


def test_verify_webdataset_names_the_key_and_reads_a_tar_source(copy_of):
    source, out = copy_of("webdataset")
    shard = out / "shard-00001.tar"
    members = []
    with tarfile.open(shard) as tar:
        for m in tar:
            members.append((m.name, tar.extractfile(m).read()))
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            if name == "sample0004.png":  # the clean source bytes in place of the protected image
                with tarfile.open(source / "shard-00001.tar") as src:
                    data = png_bytes(decode(src.extractfile(next(m for m in src if m.name.startswith(
                        "sample0004."))).read()))
            if not name.startswith("sample0005."):  # sample 5 dropped entirely
                _add(tar, name, data)
    report = verify_directory(out, source=str(source))
    assert report.keys("altered") == ["sample0004"] and report.keys("unprotected") == ["sample0004"]
    assert report.keys("missing") == ["sample0005"] and report.findings["extra"] == []
    assert report.locations("altered") == ["shard-00001.tar:sample0004.png"]


def test_verify_cli_exit_codes_and_json(copy_of, tmp_path, capsys):
    _, out = copy_of("imagefolder")
    assert main(["verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    (out / "faces" / "face1.png").write_bytes(b"not an image at all")
    report_file = tmp_path / "report.json"
    assert main(["verify", str(out), "--json", str(report_file)]) == 1
    printed = capsys.readouterr().out
    key = next(r["key"] for r in manifest_rows(out) if r["source"] == "faces/face1.png")
    assert "FAILED" in printed and key in printed
    saved = json.loads(report_file.read_text())
    assert saved["ok"] is False and [f["key"] for f in saved["findings"]["altered"]] == [key]
    assert main(["verify", str(tmp_path / "no" / "such" / "folder")]) == 2
    assert "neither an existing folder nor a Hub dataset id" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["verify", str(empty)]) == 1


def test_verify_reads_the_shard_runners_bookkeeping(copy_of):
    _, out = copy_of("webdataset")
    (out / ".shard-00002.tar.tmp-123-abc").write_bytes(b"partial")  # a crashed write: ignored
    layout = detect_layout(out)
    assert layout.name == "webdataset" and layout.files == ["shard-00000.tar", "shard-00001.tar"]
    assert pq.read_table(out / ".udp" / "manifest.parquet").num_rows == 6
    (out / ".udp" / "manifest.parquet").unlink()  # a run that has not merged its manifests yet
    report = verify_directory(out)
    assert report.ok and report.verified == 6, report.format()


def test_readers_skip_what_is_not_a_sample_image_and_read_path_only_entries_only_under_a_root(tmp_path):
    """The readers verify uses (sources/): a tar member without a WebDataset key or that is not
    a file is no sample image; an Arrow image struct with ``bytes: null`` is read from its local
    ``path`` (None when that file is gone)."""
    import pyarrow as pa

    from udp_datasets.formats.layouts import iter_source_images
    from udp_datasets.sources.parquet import iter_parquet_images
    from udp_datasets.formats.webdataset import iter_tar_images

    shard = tmp_path / "tars" / "shard-0.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "a.png", b"A")
        _add(tar, "a.json", b"{}")
        _add(tar, ".hidden.png", b"H")  # no key: never a sample
        link = tarfile.TarInfo("b.png")
        link.type, link.linkname = tarfile.SYMTYPE, "a.png"
        tar.addfile(link)  # an image entry that is not a file
        _add(tar, "dir/c.left.jpg", b"C")
    assert list(iter_tar_images(str(shard))) == [("a.png", "a", b"A"), ("dir/c.left.jpg", "dir/c", b"C")]
    assert list(iter_source_images(str(shard.parent))) == [("shard-0.tar:a.png", b"A"),
                                                            ("shard-0.tar:dir/c.left.jpg", b"C")]

    on_disk = tmp_path / "x.png"
    on_disk.write_bytes(b"X")
    images = pa.array([{"bytes": b"P", "path": None}, {"bytes": None, "path": str(on_disk)},
                       {"bytes": None, "path": str(tmp_path / "gone.png")}, None],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": images, "label": [0, 1, 2, 3]}), tmp_path / "rows.parquet")
    # published data: a path-only entry is never opened (issue 13); a local source's root allows it
    assert list(iter_parquet_images(str(tmp_path / "rows.parquet"))) == [b"P", None, None, None]
    assert list(iter_parquet_images(str(tmp_path / "rows.parquet"), root=tmp_path)) == [b"P", b"X", None, None]


def test_verify_accepts_a_job_made_under_config_version_1(copy_of):
    """A job recorded before config_version existed (its config has no config_version, no
    encoder_reduction) or made with config_version=1 keeps its config hash and still verifies."""
    from udp_datasets import ProtectionConfig

    _, out = copy_of("arrow")
    record_file = out / "udp_protection.json"
    record = json.loads(record_file.read_text())
    new_hash = ProtectionConfig.from_dict(record["config"]).hash()
    for field in ("config_version", "encoder_reduction"):
        record["config"].pop(field, None)
    record_file.write_text(json.dumps(record))
    old = ProtectionConfig.from_dict(record["config"])
    assert old.config_version == 1 and old.hash() == new_hash == record["config_hash"]
    report = verify_directory(out)
    assert report.ok, report.format()
    assert report.config_hash == new_hash


def _record_like(written: dict, *, udp_version: str, config_version: bool, digest: str | None) -> dict:
    """``written`` (a job record of this version) as another writer would have left it."""
    config = {k: v for k, v in written["config"].items()
              if config_version or k not in ("config_version", "encoder_reduction")}
    record = dict(written, config=config, versions={**written["versions"], "udp_datasets": udp_version})
    if digest is None:
        record.pop("manifest_sha256")
    else:
        record["manifest_sha256"] = digest
    return record


WARNING_0_2 = "no manifest digest (written by 0.2.x): pixel hashes checked, manifest integrity not provable"


def test_verify_accepts_a_0_2_record_without_a_digest_with_a_warning(copy_of, capsys):
    """Issue 18 against issue 20: 0.2 wrote no manifest_sha256 (nor config_version; its versions
    name 0.2.x). Such a job still verifies, saying the manifest's integrity is not provable; its
    images are still checked against the manifest, so a damaged one still fails."""
    _, out = copy_of("imagefolder")
    record_file = out / "udp_protection.json"
    written = json.loads(record_file.read_text())
    record_file.write_text(json.dumps(_record_like(written, udp_version="0.2.0", config_version=False, digest=None)))
    report = verify_directory(out)
    assert report.ok and report.verified == report.expected == 6, report.format()
    assert report.warnings == [WARNING_0_2]
    assert main(["verify", str(out)]) == 0
    assert f"warning     {WARNING_0_2}" in capsys.readouterr().out
    (out / "faces" / "face1.png").write_bytes(b"not an image at all")
    damaged = verify_directory(out)
    assert not damaged.ok and len(damaged.keys("altered")) == 1 and damaged.warnings == [WARNING_0_2]


@pytest.mark.parametrize("udp_version,config_version,digest,message", [
    ("0.3.0", True, None, "has no manifest_sha256"),  # a 0.3 record whose digest was removed
    ("0.3.0", True, "0" * 64, "differs from the"),  # ... or replaced
    ("0.2.0", True, None, "has no manifest_sha256"),  # a config_version: written on the way to 0.3
    ("0.3.0", False, None, "has no manifest_sha256"),  # a 0.3 version: no config_version is no excuse
])
def test_verify_fails_a_0_3_record_without_its_digest(copy_of, udp_version, config_version, digest, message):
    _, out = copy_of("imagefolder")
    record_file = out / "udp_protection.json"
    written = json.loads(record_file.read_text())
    record_file.write_text(json.dumps(_record_like(written, udp_version=udp_version, config_version=config_version,
                                                   digest=digest)))
    report = verify_directory(out)
    assert not report.ok and report.warnings == [], report.format()
    assert [p for p in report.problems if message in p], report.problems
