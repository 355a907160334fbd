"""The few-shot study's shipped pretraining (models/weights/glyph_victim): intact, keyed to the default study,
installed as the pairs pretraining would have saved, and used only where its key matches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from udp_datasets.evaluate.victims.fewshot_pretrain import (PretrainRecipe, cache_key, install_shipped_pretraining,
                                                           load_victim_unet, pretrain_unet)
from udp_datasets.models import load_surrogate, weights_sha256
from udp_datasets.models import shipped
from udp_datasets.models.base import SurrogateError

SHIPPED = shipped.packaged_weights(shipped.GLYPH_VICTIM)


def provenance() -> dict:
    return json.loads((SHIPPED / "provenance.json").read_text())


def test_shipped_weights_match_their_recorded_sha256() -> None:
    assert weights_sha256(SHIPPED) == shipped.GLYPH_VICTIM_SHA256 == provenance()["sha256"]


def test_shipped_key_is_the_default_glyph_study_key() -> None:
    """A change of the default recipe or corpus must ship new weights (or the study would pretrain again). The
    key also holds the TAEF2 weights' hash, so the shipped latent statistics (what encoding this corpus through
    this TAEF2 measured: 0.737 std, as the study logs) stay the corpus's own."""
    from udp_datasets.evaluate.subjects import read_corpus

    recipe = PretrainRecipe()
    corpus, _ = read_corpus("glyphs", recipe.corpus_count, recipe.corpus_seed, 64, named_by_user=False)
    assert provenance()["cache_key"] == cache_key(recipe, corpus)
    assert provenance()["recipe"] == recipe.to_dict()


def test_install_writes_the_pairs_pretraining_would_and_skips_training(tmp_path: Path) -> None:
    folder = tmp_path / f"fewshot-pretrain-{provenance()['cache_key']}"
    stats = install_shipped_pretraining(folder, PretrainRecipe())
    assert stats is not None and stats["channel_std"] == provenance()["latent_statistics"]["channel_std"]
    assert not (folder / "corpus.pt").exists()  # the corpus need not be encoded
    shipped_victim = load_file(SHIPPED / "victim" / "diffusion_pytorch_model.safetensors")
    installed = load_victim_unet(folder).state_dict()
    assert set(installed) == set(shipped_victim)
    assert all(torch.equal(installed[k], shipped_victim[k].float()) for k in shipped_victim)
    surrogate = load_surrogate(str(folder / "surrogate"))  # a pair folder the protector reads
    assert surrogate is not None
    # pretrain_unet finds both and trains nothing: it returns the shipped record (no corpus.pt is needed)
    for kind in ("victim", "surrogate"):
        record = pretrain_unet(kind, folder, PretrainRecipe(), progress=False)
        assert record["source"] == "shipped" and record["seconds"] == provenance()["training"][kind]["seconds"]


def test_install_leaves_another_key_alone(tmp_path: Path) -> None:
    folder = tmp_path / "fewshot-pretrain-0123456789abcdef"
    assert install_shipped_pretraining(folder, PretrainRecipe()) is None
    assert not folder.exists()


def test_damaged_shipped_weights_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shipped, "GLYPH_VICTIM_SHA256", "0" * 64)
    folder = tmp_path / f"fewshot-pretrain-{provenance()['cache_key']}"
    with pytest.raises(SurrogateError, match="differ from the SHA-256"):
        install_shipped_pretraining(folder, PretrainRecipe())
    assert not (folder / "victim").exists()


def test_pretraining_from_scratch_gets_its_own_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the package ships the pretraining, --pretrain-from-scratch must not reuse (or be reused by) the
    installed weights, nor the sets and victims a study keyed by that folder's name."""
    from dataclasses import replace

    from udp_datasets.evaluate.experiments import fewshot, fewshot_setup
    from udp_datasets.evaluate.subjects import bundled_corpus

    settings = replace(fewshot.FewshotSettings(), pretrain=PretrainRecipe(corpus_count=8))
    corpus = bundled_corpus(8)
    key = cache_key(settings.pretrain, corpus)
    shipped_default = fewshot_setup.pretrain_folder(corpus, settings, tmp_path)
    assert shipped_default.name == f"fewshot-pretrain-{key}"  # not the shipped key: one folder either way
    assert fewshot_setup.pretrain_folder(corpus, replace(settings, shipped_pretraining=False), tmp_path) == shipped_default
    monkeypatch.setattr(fewshot_setup, "shipped_pretraining_key", lambda: key)  # as if this were the shipped study
    assert fewshot_setup.pretrain_folder(corpus, settings, tmp_path) == shipped_default
    scratch = fewshot_setup.pretrain_folder(corpus, replace(settings, shipped_pretraining=False), tmp_path)
    assert scratch.name == f"fewshot-pretrain-{key}-scratch"
    real_scratch = tmp_path / f"fewshot-pretrain-{provenance()['cache_key']}-scratch"
    assert install_shipped_pretraining(real_scratch, PretrainRecipe()) is None and not real_scratch.exists()
