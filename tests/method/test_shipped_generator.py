"""The generator shipped in the package (``--engine generator`` with no ``--generator``, issue 19): it loads offline
and matches its SHA-256, changes real photos within the budget, and a generator job passes verify and publish."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from hub_server import local_hub  # noqa: F401  (a fixture)
from test_publish import client
from udp_datasets import ProtectionConfig, Protector
from udp_datasets.method.generator import (SHIPPED_GENERATOR_SHA256, load_generator, read_generator,
                                           shipped_generator_folder)
from udp_datasets.method.generator_training import PROVENANCE_FILE
from udp_datasets.models import weights_sha256
from udp_datasets.images import ProtectedImage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_shipped_generator_loads_offline_and_matches_its_sha256(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = shipped_generator_folder()
    assert weights_sha256(folder) == SHIPPED_GENERATOR_SHA256
    net, sha = read_generator(None)
    assert sha == SHIPPED_GENERATOR_SHA256 and read_generator("photoguard")[1] == sha
    assert load_generator(None) is load_generator(None)  # once per process and device
    record = json.loads((folder / PROVENANCE_FILE).read_text())
    assert record["weights_sha256"] == SHIPPED_GENERATOR_SHA256 and record["preset"] == "photoguard"
    assert record["command"].startswith("udp-datasets train-generator bundled ")
    assert record["machine"]["torch_threads"] == 1 and record["train_seconds"] > 0
    assert len(record["corpus"]["sha256"]) == 64 and len(record["surrogate"]["sha256"]) == 64
    assert (folder / "PROVENANCE.md").exists()
    assert sum(p.stat().st_size for p in folder.glob("*.safetensors")) < 4 * 2 ** 20


def test_shipped_generator_changes_real_photos_and_differs_from_pgd(tiny_config, photos32):
    outs = {}
    for engine in ("pgd", "generator", "generator+pgd"):  # generator=None: the shipped one
        config = tiny_config.replace(engine=engine, steps=2, generator_pgd_steps=2)
        outs[engine] = Protector(config, progress=False).protect_images(photos32[:3], keys=["a", "b", "c"])
        assert all(isinstance(r, ProtectedImage) and r.linf >= 1 for r in outs[engine])
    assert [r.png for r in outs["generator"]] != [r.png for r in outs["pgd"]]
    assert [r.png for r in outs["generator+pgd"]] != [r.png for r in outs["generator"]]



def test_publish_and_verify_accept_a_generator_job(local_hub, photos32, tmp_path):  # noqa: F811
    from udp_datasets.cli.app import main

    source = tmp_path / "src" / "cats"
    source.mkdir(parents=True)
    for i, arr in enumerate(photos32[:4]):
        Image.fromarray(arr).save(source / f"photo{i}.png")
    out = tmp_path / "protected"
    assert main(["protect", str(source.parent), str(out), "--engine", "generator", "--format", "imagefolder"]) == 0
    record = json.loads((out / "udp_protection.json").read_text())
    assert record["config"]["engine"] == "generator" and record["config_hash"] != ProtectionConfig.from_dict(
        {**record["config"], "engine": "pgd"}).hash()
    assert main(["verify", str(out)]) == 0
    repo = "test-user/generator-job"
    result, printed = client(local_hub, f"""
rc = main(["publish", {str(out)!r}, {repo!r}])
emit({{"rc": rc, "verify": main(["verify", {repo!r}])}})
""", tmp_path / "client")
    assert result["rc"] == 0 and result["verify"] == 0, printed[-3000:]
    assert "manifest.parquet" in local_hub.list_files(repo)


def test_the_shard_runner_protects_with_the_generator_and_a_pgd_rerun_is_another_job(photos32, tmp_path):
    from test_verify import make_tar_source

    from udp_datasets.cli.app import main

    folder = tmp_path / "src" / "cats"
    folder.mkdir(parents=True)
    for i, arr in enumerate(photos32[:4]):
        Image.fromarray(arr).save(folder / f"photo{i}.png")
    tars = tmp_path / "tars"
    make_tar_source(folder.parent, tars, per_shard=2)
    out = tmp_path / "out"
    assert main(["protect", str(tars), str(out), "--engine", "generator"]) == 0
    record = json.loads((out / ".udp" / "job.json").read_text())
    assert record["config"]["engine"] == "generator" and record["images"] == 4
    assert main(["verify", str(out), "--source", str(tars)]) == 0
    again = main(["protect", str(tars), str(out), "--engine", "generator"])  # the same job: every shard skipped
    rerun = main(["protect", str(tars), str(out)])  # PGD: another job hash, refused without --overwrite
    assert again == 0 and rerun == 2
