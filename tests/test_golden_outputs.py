"""Byte-identical outputs: the safety net for refactors.

A fixed, small protect job runs through every path that writes protected images (the fit,
``Protector.protect_images``, the ``datasets.map`` job behind ``udp-datasets protect``, tar and
Parquet shard jobs, a latent surrogate with the encoder term) and the SHA-256 of what each
writes is compared with ``tests/golden/protect_outputs.json`` (the fitted weights by their values:
their file's bytes depend on the safetensors build). A refactor that changes one
output byte fails here, with the path that changed.

The golden file was written by the code before the package was regrouped (issue 11). To
rewrite it after an *intended* change of output: ``UDP_DATASETS_UPDATE_GOLDEN=1 pytest
tests/test_golden_outputs.py`` and say why in the commit. Hashes are of CPU float32 runs with
one torch thread (the latent case pins float32: its default precision depends on the CPU).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from udp_datasets import ProtectionConfig, Protector
from udp_datasets.sources.bundled import photo_crops

GOLDEN = Path(__file__).with_name("golden") / "protect_outputs.json"
CONFIG = ProtectionConfig(resolution=16, fit_rounds=2, fit_surrogate_steps=6, fit_pgd_steps=2,
                          fit_batch_size=8, steps=5, batch_size=4, seed=7)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _tar(path: Path, images: list[np.ndarray]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, arr in enumerate(images):
            for name, payload in ((f"k{i:03d}.jpg", _encoded(arr, "JPEG")), (f"k{i:03d}.txt", f"c{i}".encode())):
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(payload), 1_650_000_000
                tar.addfile(info, io.BytesIO(payload))


def _outputs(tmp: Path) -> dict[str, object]:
    from udp_datasets.cli.app import main
    from udp_datasets.records.manifest import read_manifest
    from udp_datasets.jobs.shard_job import run_shards

    photos = photo_crops(32, per_photo=1)[:6]
    out: dict[str, object] = {}

    protector = Protector(CONFIG, progress=False)
    protector.fit(photos, output_dir=tmp / "surrogate")
    out["fit.weights"] = _weights_fingerprint(tmp / "surrogate")
    out["protect_images"] = [r.sha256 for r in protector.protect_images(photos)]
    surrogate = str(tmp / "surrogate")
    flags = ["--surrogate", surrogate, "--resolution", "16", "--steps", "5", "--batch-size", "4", "--seed", "7"]

    folder = tmp / "folder"
    folder.mkdir()
    for i, arr in enumerate(photos):
        (folder / f"img{i}.{'png' if i % 2 else 'jpg'}").write_bytes(_encoded(arr, "PNG" if i % 2 else "JPEG"))
    assert main(["protect", str(folder), str(tmp / "dataset_job"), *flags]) == 0
    rows = read_manifest(tmp / "dataset_job" / "manifest.parquet").to_pylist()
    out["dataset_job.manifest"] = sorted((r["source"], r["sha256"], r["linf"]) for r in rows)

    (tmp / "tars").mkdir()
    _tar(tmp / "tars" / "part-000000.tar", photos[:4])
    _tar(tmp / "tars" / "part-000001.tar", photos[4:])
    shard_config = CONFIG.replace(surrogate=surrogate)
    run_shards(str(tmp / "tars"), tmp / "tar_job", shard_config, progress=False)
    out["tar_job"] = {p.name: _sha(p.read_bytes()) for p in sorted((tmp / "tar_job").glob("*.tar"))}

    (tmp / "parquet").mkdir()
    table = pa.table({"id": [f"r{i}" for i in range(len(photos))],
                      "image": [{"bytes": _encoded(a, "PNG"), "path": f"r{i}.png"} for i, a in enumerate(photos)]})
    pq.write_table(table, tmp / "parquet" / "rows.parquet")
    run_shards(str(tmp / "parquet"), tmp / "parquet_job", shard_config, key_column="id", progress=False)
    out["parquet_job"] = _sha((tmp / "parquet_job" / "rows.parquet").read_bytes())

    from udp_datasets.evaluate.tiny_models import save_tiny_latent_pair

    save_tiny_latent_pair(tmp / "latent", image_size=32, seed=3)
    # float32 pinned: the default (autocast/channels_last "auto") computes latent surrogates in bfloat16 on
    # CPUs with bf16 in hardware and in float32 elsewhere, and a golden hash must not depend on the CPU
    latent = Protector(ProtectionConfig(surrogate=str(tmp / "latent"), objective="adversarial", encoder_weight=1.0,
                                        steps=4, seed=7, autocast="off", channels_last="off"), progress=False)
    out["latent.protect_images"] = [r.sha256 for r in latent.protect_images(photos[:3])]
    return json.loads(json.dumps(out))  # tuples -> lists, as in the golden file


def _weights_fingerprint(folder: Path) -> dict[str, float]:
    """The fitted weights' values, not their file's bytes: safetensors builds of one version number have
    laid out the same tensors in files that hash differently (c70e5ce re-pinned the file hash once; a fresh
    venv then gave the old one back), so the golden run compares tensor count, sum and sum of squares."""
    from safetensors.numpy import load_file

    tensors = {f"{f.relative_to(folder)}:{k}": v.astype(np.float64) for f in sorted(folder.rglob("*.safetensors"))
               for k, v in load_file(f).items()}
    return {"count": len(tensors), "sum": float(sum(t.sum() for t in tensors.values())),
            "sumsq": float(sum((t * t).sum() for t in tensors.values()))}


def _same(key: str, want: object, got: object) -> bool:
    """Byte-identical everywhere; the fitted weights by their values (count, sum, sum of squares to 1e-7)."""
    if key == "fit.weights" and isinstance(want, dict) and isinstance(got, dict):
        return want["count"] == got["count"] and all(
            got[k] == pytest.approx(want[k], rel=1e-7) for k in ("sum", "sumsq"))
    return want == got


def test_protect_outputs_are_byte_identical_to_the_golden_run(tmp_path):
    got = _outputs(tmp_path)
    if os.environ.get("UDP_DATASETS_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    changed = sorted(k for k in set(want) | set(got) if not _same(k, want.get(k), got.get(k)))
    assert not changed, f"outputs changed on these paths: {changed}"
