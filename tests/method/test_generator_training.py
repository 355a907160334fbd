"""Training the generator engine (``udp-datasets train-generator``, issue 19): a run interrupted after a checkpoint
resumes to the same weights, bit for bit; the CLI writes safetensors + provenance that protect and verify read."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from udp_datasets.method.generator import PerturbationGenerator, save_generator
from udp_datasets.method.generator_training import PROVENANCE_FILE, GeneratorRecipe, train_generator
from udp_datasets.models import weights_sha256
from resumable import interrupt_then_resume

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_RECIPE = GeneratorRecipe(steps=4, batch_size=2, width=4, learning_rate=1e-2)


@pytest.fixture(scope="module")
def corpus() -> list[np.ndarray]:
    from udp_datasets.sources.bundled import photo_crops

    return photo_crops(32, per_photo=1)[:6]


# ------------------------------------------------------------------ training
def test_an_interrupted_generator_training_resumes_to_the_same_weights(corpus, tmp_path):
    def train(out, **hooks):
        return train_generator(corpus, out, TINY_RECIPE, save_every=2, progress=False, **hooks)

    whole = train(tmp_path / "whole")
    resumed = interrupt_then_resume(train, tmp_path / "cut", at_step=2)
    assert resumed["weights_sha256"] == whole["weights_sha256"] == weights_sha256(tmp_path / "cut")
    assert whole["weights_sha256"] != weights_sha256(_untrained(tmp_path / "untrained"))  # it did train
    from udp_datasets import SurrogateError

    with pytest.raises(SurrogateError, match="exists"):
        train_generator(corpus, tmp_path / "whole", TINY_RECIPE, progress=False)


def _untrained(folder):
    save_generator(PerturbationGenerator(width=TINY_RECIPE.width, seed=TINY_RECIPE.seed), folder)
    return folder


def test_cli_train_generator_writes_provenance_and_protect_verify_read_it(corpus, tmp_path):
    from udp_datasets.cli.app import main

    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, arr in enumerate(corpus):
        Image.fromarray(arr).save(folder / f"{i}.png")
    out = tmp_path / "gen"
    assert main(["train-generator", str(folder), str(out), "--preset", "photoguard", "--count", "8", "--size", "32",
                 "--steps", "2", "--batch-size", "2", "--width", "4", "--eot", "blur", "--save-every", "1"]) == 0
    record = json.loads((out / PROVENANCE_FILE).read_text())
    assert record["command"].startswith("udp-datasets train-generator ") and record["corpus"]["count"] == 8
    assert record["preset"] == "photoguard" and record["config"]["objective"] == "encoder"
    assert record["config"]["eot"] == "blur" and record["steps"] == 2 and record["objective_maximised"]
    assert {"torch", "udp-datasets"} <= set(record["versions"]) and record["machine"]["cores"] >= 1
    assert main(["train-generator", str(folder), str(out), "--preset", "photoguard"]) == 2  # OUT exists
    with pytest.raises(SystemExit):  # not a preset: argparse's usage error
        main(["train-generator", str(folder), str(tmp_path / "x"), "--preset", "nope"])
    dst = tmp_path / "dst"
    assert main(["protect", str(folder), str(dst), "--engine", "generator", "--generator", str(out),
                 "--format", "imagefolder", "--epsilon", "8/255"]) == 0
    assert main(["verify", str(dst)]) == 0
