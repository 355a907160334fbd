"""Protector as a datasets map function: columns, features, PNG, errors, pickling, cache."""

import io
import json
import pickle
import subprocess
import sys
import textwrap

import datasets
import numpy as np
import pytest
from PIL import Image

from udp_datasets import ColumnError, ImageError, Protector, SurrogateError
from udp_datasets.images import decode_png_pixels

from conftest import TINY


def _dataset(photos, faces):
    images = [Image.fromarray(a) for a in photos[:6]] + [Image.fromarray(f[:, :, 0], "L") for f in faces[:3]]
    ds = datasets.Dataset.from_dict({"image": images, "label": list(range(len(images))),
                                     "caption": [f"c{i}" for i in range(len(images))]})
    return ds.cast_column("image", datasets.Image())


def _raw(ds):
    return ds.cast_column("image", datasets.Image(decode=False))["image"]


def test_map_round_trip_keeps_columns_features_and_budget(tiny_config, photos32, grey_faces):
    ds = _dataset(photos32, grey_faces)
    out = ds.map(Protector(tiny_config, progress=False), batched=True, batch_size=4)
    assert out.features == ds.features
    assert out["label"] == ds["label"] and out["caption"] == ds["caption"]
    for clean, value in zip(_raw(ds), _raw(out)):
        assert value["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
        prot = decode_png_pixels(value["bytes"])
        orig = np.asarray(Image.open(io.BytesIO(clean["bytes"])))
        orig = orig[:, :, None] if orig.ndim == 2 else orig
        assert prot.shape == orig.shape  # own resolution and mode (mixed 32x32 RGB / 25x25 L)
        diff = np.abs(prot.astype(int) - orig.astype(int))
        assert 0 < diff.max() <= tiny_config.budget_levels


def test_same_job_gives_same_bytes_and_provenance(tiny_config, photos32, grey_faces):
    ds = _dataset(photos32, grey_faces)
    p = Protector(tiny_config, provenance_columns=True, progress=False)
    a = ds.map(p, batched=True, batch_size=4)
    b = ds.map(Protector(tiny_config, provenance_columns=True, progress=False), batched=True, batch_size=4)
    assert _raw(a) == _raw(b)
    assert a["udp_sha256"] == b["udp_sha256"] and all(x <= 8 for x in a["udp_linf"])
    other = ds.map(Protector(tiny_config.replace(seed=1), progress=False), batched=True, batch_size=4)
    assert _raw(other) != _raw(a)


def test_errors_raise_or_quarantine(tiny_config, photos32, tmp_path):
    good = io.BytesIO()
    Image.fromarray(photos32[0]).save(good, format="PNG")
    batch = {"image": [{"bytes": good.getvalue(), "path": None}, {"bytes": b"garbage", "path": "bad.png"}],
             "id": ["a", "b"]}
    with pytest.raises(ImageError, match="bad.png"):
        Protector(tiny_config, progress=False)(batch)
    log = tmp_path / "errors.jsonl"
    out = Protector(tiny_config, errors="quarantine", errors_file=log, progress=False)(batch)
    assert out["id"] == ["a"] and len(out["image"]) == 1
    record = json.loads(log.read_text().strip())
    assert record["key"] == "bad.png" and "not a readable image" in record["reason"]


def test_protector_map_quarantines_corrupt_files_in_a_decoding_column(tiny_config, photos32, tmp_path):
    good = io.BytesIO()
    Image.fromarray(photos32[0]).save(good, format="JPEG")
    ds = datasets.Dataset.from_dict({"image": [{"bytes": good.getvalue(), "path": "ok.jpg"},
                                               {"bytes": b"\xff\xd8 truncated", "path": "bad.jpg"}],
                                     "n": [1, 2]}).cast_column("image", datasets.Image())
    log = tmp_path / "e.jsonl"
    out = Protector(tiny_config, errors="quarantine", errors_file=log, progress=False).map(ds)
    assert out["n"] == [1] and isinstance(out.features["image"], datasets.Image)
    assert out[0]["image"].format == "PNG"
    assert json.loads(log.read_text())["key"] == "bad.jpg"


def test_missing_columns_and_missing_surrogate(tiny_config):
    with pytest.raises(ColumnError, match="image column 'img' not found.*'image'"):
        Protector(tiny_config, image_column="img")({"image": [], "x": []})
    with pytest.raises(ColumnError, match="key column"):
        Protector(tiny_config, key_column="id")({"image": []})
    with pytest.raises(SurrogateError, match="call Protector.fit"):
        Protector(TINY).prepare_surrogate()


def test_pickles_small_without_weights(tiny_config, photos32):
    p = Protector(tiny_config, progress=False)
    p.protect_images(photos32[:1])  # loads the model
    blob = pickle.dumps(p)
    assert len(blob) < 5000
    clone = pickle.loads(blob)
    assert clone.engine.session.surrogate is None and clone.surrogate_ref.sha256 == p.surrogate_ref.sha256
    assert datasets.fingerprint.Hasher.hash(p) == datasets.fingerprint.Hasher.hash(clone)


def test_iterable_dataset_map(tiny_config, photos32, grey_faces):
    ds = _dataset(photos32, grey_faces)
    p = Protector(tiny_config, progress=False)
    it = ds.to_iterable_dataset().map(p, batched=True, batch_size=4, features=p.output_features(ds.features))
    rows = list(it)
    assert len(rows) == len(ds) and [r["label"] for r in rows] == ds["label"]
    assert isinstance(it.features["image"], datasets.Image)
    assert all(r["image"]["bytes"].startswith(b"\x89PNG") for r in rows)


CACHE_SCRIPT = textwrap.dedent("""
    import json, sys, time, datasets, multiprocess
    from udp_datasets import ProtectionConfig, Protector
    if int(sys.argv[3]) > 1:
        multiprocess.set_start_method("spawn")  # the convention for CUDA workers: nothing inherited
    cfg = ProtectionConfig.from_json(sys.argv[2])
    ds = datasets.load_from_disk(sys.argv[1])
    p = Protector(cfg, progress=False)
    out = ds.map(p, batched=True, batch_size=4, num_proc=int(sys.argv[3]) or None,
                 with_rank=int(sys.argv[3]) > 1)
    print(json.dumps({"fingerprint": out._fingerprint, "cache_files": [c["filename"] for c in out.cache_files],
                      "loaded": p.engine.session.surrogate is not None, "n": len(out)}))
""")


def _run_map(saved, config, num_proc=0):
    proc = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, str(saved), config.to_json(), str(num_proc)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_datasets_cache(tiny_config, photos32, grey_faces, tmp_path):
    saved = tmp_path / "clean"
    _dataset(photos32, grey_faces).save_to_disk(str(saved))
    first = _run_map(saved, tiny_config)
    second = _run_map(saved, tiny_config)
    assert first["loaded"] and not second["loaded"]  # the model was never loaded the second time
    assert first["fingerprint"] == second["fingerprint"] and first["cache_files"] == second["cache_files"]


@pytest.mark.slow
def test_num_proc_two_with_rank(tiny_config, photos32, grey_faces, tmp_path):
    saved = tmp_path / "clean2"
    ds = _dataset(photos32, grey_faces)
    ds.save_to_disk(str(saved))
    result = _run_map(saved, tiny_config.replace(steps=2), num_proc=2)
    assert result["n"] == len(ds) and len(result["cache_files"]) == 2
