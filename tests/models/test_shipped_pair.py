"""The latent pair shipped in the package (``--surrogate taef2`` / ``bundled``) and the default of
``udp-datasets protect`` since 0.3: it loads offline, its weights are the recorded ones, and a protect run
with no ``--surrogate`` uses it and says so in its record."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from udp_datasets import load_surrogate
from udp_datasets.cli.app import main
from udp_datasets.config import LATENT_DEFAULTS_V2
from udp_datasets.models import SHIPPED_PAIR_SHA256, shipped_pair_folder, weights_sha256

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_the_shipped_pair_loads_offline_and_matches_its_recorded_sha256(offline):
    folder = shipped_pair_folder()
    assert weights_sha256(folder) == SHIPPED_PAIR_SHA256
    record = json.loads((folder / "provenance.json").read_text())
    assert record["weights_sha256"] == SHIPPED_PAIR_SHA256
    assert SHIPPED_PAIR_SHA256 in (folder / "PROVENANCE.md").read_text()
    assert (folder / "LICENSE").exists()  # TAEF2's MIT licence travels with its weights
    for name in ("taef2", "bundled"):
        pair = load_surrogate(name)
        assert (pair.kind, pair.ref.source, pair.ref.sha256) == ("latent", name, SHIPPED_PAIR_SHA256)
        assert pair.normalisation.per_channel and pair.image_size == (64, 64)
        assert next(pair.unet.parameters()).dtype == torch.float32  # stored in float16, computed in float32


def test_the_shipped_pair_encodes_with_the_shipped_taef2_weights(offline):
    from udp_datasets.models.tiny_autoencoder import bundled_taef2

    pair, taef2 = load_surrogate("taef2"), bundled_taef2()
    ours = dict(taef2.encoder.named_parameters())
    for name, p in pair.vae.encoder.named_parameters():
        assert torch.equal(p, ours[name]), name  # fp16 values, the same as weights/taef2's


def _folder(tmp_path, photos32):
    src = tmp_path / "pictures"
    src.mkdir()
    for i, arr in enumerate(photos32[:2]):
        Image.fromarray(arr).save(src / f"{i}.png")
    return src


def test_protect_with_no_surrogate_uses_the_shipped_pair_and_records_it(tmp_path, photos32, offline, capsys):
    src = _folder(tmp_path, photos32)
    assert main(["protect", str(src), str(tmp_path / "out"), "--steps", "2"]) == 0
    record = json.loads((tmp_path / "out" / "udp_protection.json").read_text())
    assert record["surrogate"]["source"] == "taef2" and record["surrogate"]["kind"] == "latent"
    assert record["surrogate"]["sha256"] == SHIPPED_PAIR_SHA256
    assert record["config"]["config_version"] == 2
    assert all(record["config"][k] == v for k, v in LATENT_DEFAULTS_V2.items())
    assert main(["verify", str(tmp_path / "out"), "--source", str(src)]) == 0
    capsys.readouterr()
    assert main(["config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["surrogate"] == "taef2" and printed["config_version"] == 2


def test_the_pixel_fit_is_one_flag_away_and_version_1_keeps_it(tmp_path, photos32, offline):
    src = _folder(tmp_path, photos32)
    fit = ["--resolution", "16", "--fit-rounds", "1", "--fit-surrogate-steps", "2", "--fit-pgd-steps", "1",
           "--steps", "2"]
    for name, flags in (("pixel", ["--surrogate", "pixel"]), ("v1", ["--config-version", "1"])):
        assert main(["protect", str(src), str(tmp_path / name), *flags, *fit]) == 0
        record = json.loads((tmp_path / name / "udp_protection.json").read_text())
        assert record["surrogate"]["kind"] == "pixel" and record["fit"] is not None, name
        assert record["config"]["objective"] == "unlearnable", name
