"""``udp-datasets pretrain``: one training loop in models/, a pair that load_surrogate reads, and a run
interrupted after a checkpoint that resumes to the same weights, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from udp_datasets import load_surrogate
from udp_datasets.models.denoiser_training import TrainRecipe
from resumable import interrupt_then_resume, interrupter
from udp_datasets.models.pair_pretraining import PROVENANCE_FILE, PairRecipe, pretrain_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = PairRecipe(train=TrainRecipe(steps=6, batch_size=4, learning_rate=1e-3, warmup_steps=2))


@pytest.fixture(scope="module")
def corpus() -> list[np.ndarray]:
    from udp_datasets.sources.bundled import photo_crops

    return photo_crops(32, per_photo=2)[:12]


def test_an_interrupted_pretraining_resumes_to_the_same_weights(corpus, tmp_path):
    def train(out, **hooks):
        return pretrain_pair(corpus, out, TINY, save_every=2, progress=False, **hooks)

    whole = train(tmp_path / "whole")
    resumed = interrupt_then_resume(train, tmp_path / "cut", at_step=4)
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    # a checkpoint of another recipe is never mixed in
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "other", on_checkpoint=interrupter(4))
    from udp_datasets import SurrogateError

    with pytest.raises(SurrogateError, match="another corpus or recipe"):
        pretrain_pair(corpus, tmp_path / "other", PairRecipe(train=TrainRecipe(steps=7, batch_size=4)),
                      progress=False)


def test_cli_pretrain_writes_a_pair_that_protect_reads(corpus, tmp_path):
    from udp_datasets.cli.app import main

    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, arr in enumerate(corpus):
        Image.fromarray(arr).save(folder / f"{i}.png")
    out = tmp_path / "pair"
    assert main(["pretrain", str(folder), str(out), "--count", "16", "--size", "32", "--steps", "3",
                 "--batch-size", "4", "--save-every", "2", "--half"]) == 0
    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert record["command"].startswith("udp-datasets pretrain ") and record["corpus"]["count"] == 16
    assert len(record["corpus"]["sha256"]) == 64 and record["recipe"]["train"]["steps"] == 3
    assert {"torch", "diffusers", "udp-datasets"} <= set(record["versions"])
    surrogate = load_surrogate(str(out))
    assert surrogate.kind == "latent" and surrogate.normalisation.per_channel
    assert surrogate.ref.sha256 == record["weights_sha256"]
    assert list(surrogate.unet.config.block_out_channels) == [48, 96]  # fewshot-surrogate
    assert main(["pretrain", str(folder), str(out), "--steps", "3"]) == 2  # OUT exists: refused
    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(corpus[0]).save(images / "a.png")
    assert main(["protect", str(images), str(tmp_path / "dst"), "--surrogate", str(out), "--preset", "photoguard",
                 "--steps", "2"]) == 0
