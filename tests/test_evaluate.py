"""Evaluation end to end on tiny data; no test claims that protection works (docs/efficacy.md does)."""

import json
import re

import numpy as np
import pytest

from udp_datasets.cli.app import EXIT_USAGE, main
from udp_datasets.evaluate.data import split_holdout
from udp_datasets.evaluate.experiments.evaluate_command import evaluate_pair
from udp_datasets.evaluate.experiments.victim_runs import EvalSettings
from udp_datasets.evaluate.metrics.fidelity import perturbation_cost
from udp_datasets.evaluate.purify.filters import ATTACKS
from udp_datasets.evaluate.report import results_table, verdict
from udp_datasets.evaluate.victims.pixel import VictimConfig, sample_victim, train_victim

TINY_VICTIM = VictimConfig(resolution=16, train_steps=12, batch_size=8, warmup_steps=2, sample_steps=5)


def test_attacks_are_deterministic_and_change_pixels(photos32):
    img = photos32[0]
    for name, attack in ATTACKS.items():
        a, b = attack(img), attack(img)
        assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)
        assert not np.array_equal(a, img), name
    grey = photos32[1][:, :, :1]
    assert ATTACKS["jpeg75"](grey).shape == grey.shape


def test_victim_trains_saves_and_samples_deterministically(photos32, tmp_path):
    result = train_victim(photos32[:8], TINY_VICTIM, tmp_path / "v", progress=False)
    assert len(result.loss_history) == 12 and np.isfinite(result.final_loss())
    from diffusers import DDPMPipeline

    DDPMPipeline.from_pretrained(tmp_path / "v")  # a standard diffusers pipeline folder
    a = sample_victim(tmp_path / "v", 3, seed=1, steps=4, progress=False)
    b = sample_victim(tmp_path / "v", 3, seed=1, steps=4, progress=False)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_perturbation_cost_and_holdout_split(photos32):
    noisy = [np.clip(a.astype(int) + 2, 0, 255).astype(np.uint8) for a in photos32[:4]]
    cost = perturbation_cost(photos32[:4], noisy)
    assert cost["linf_levels"] == 2 and 40 < cost["psnr_db"] < 50 and cost["ssim"] > 0.95
    train, hold = split_holdout(20, 0.25, seed=0)
    assert len(hold) == 5 and len(train) == 15 and not set(train) & set(hold)
    with pytest.raises(ValueError, match="differ in size"):
        perturbation_cost(photos32[:4], noisy[:3])


def test_evaluate_pair_writes_a_consistent_report(photos32, tmp_path):
    from udp_datasets.sources.bundled import photo_patches

    clean = photo_patches(16, 48, seed=3)
    protected = [np.clip(a.astype(int) + np.random.default_rng(i).integers(-8, 9, a.shape), 0, 255)
                 .astype(np.uint8) for i, a in enumerate(clean)]
    settings = EvalSettings(victim=TINY_VICTIM, num_samples=16, attacks=("jpeg75",))
    report = evaluate_pair(clean, protected, tmp_path / "r", settings, progress=False)
    for name in ("report.json", "report.md", "samples.png", "loss_curves.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(saved["victims"]) == {"reference", "clean", "protected", "protected+jpeg75"}
    assert saved["victims"]["clean"]["fd_ratio_vs_clean"] == 1.0
    assert saved["data"] == {"train": 36, "holdout": 12, "holdout_fraction": 0.25}
    md = (tmp_path / "r" / "report.md").read_text()
    for name in ("clean", "protected", "protected+jpeg75"):
        fd = saved["victims"][name]["fd"]
        assert re.search(rf"\| {re.escape(name)} \| {fd:.3f} \|", md), name
    assert f"max L-inf {saved['perturbation']['protected']['linf_levels']} levels" in md
    assert report["victims"]["protected"]["fd"] == saved["victims"]["protected"]["fd"]
    # the dataset card embeds this block verbatim (publish/ reads report.json, never evaluate/)
    card = saved["card_markdown"]
    assert card == report["card_markdown"] and card.startswith(verdict(saved["victims"]) + "\n\n")
    assert results_table({k: v for k, v in saved["victims"].items() if k != "reference"}) in card
    assert "| protected+jpeg75 |" in card and "| reference |" not in card
    assert f"Victim `victim-tiny`, {TINY_VICTIM.train_steps} training steps at 16 px" in card


@pytest.mark.slow
def test_cli_evaluate_on_protect_output(tiny_config, tmp_path, photos32):
    import datasets
    from PIL import Image

    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in photos32[:16]]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "clean"))
    assert main(["protect", str(tmp_path / "clean"), str(tmp_path / "prot"), "--surrogate",
                 tiny_config.surrogate, "--resolution", "16", "--steps", "2"]) == 0
    code = main(["evaluate", "--clean", str(tmp_path / "clean"), "--protected", str(tmp_path / "prot"),
                 "--out", str(tmp_path / "rep"), "--victim-steps", "5", "--victim-batch-size", "4",
                 "--num-samples", "8", "--sample-steps", "3", "--attacks", "none"])
    assert code == 0
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(saved["victims"]) == {"reference", "clean", "protected"}
    assert 0 < saved["perturbation"]["protected"]["linf_levels"] <= 8


def test_cli_evaluate_errors(tmp_path, capsys):
    assert main(["evaluate", "--clean", str(tmp_path), "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert "both --clean and --protected" in capsys.readouterr().err
    assert main(["evaluate", "--attacks", "jpeg10", "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert "unknown attack" in capsys.readouterr().err


# every name the 0.1 evaluate modules exported that users and docs name, at its old path
OLD_EVALUATE_NAMES = {
    "victim": ["VictimConfig", "train_victim", "sample_victim", "train_denoiser", "VICTIM_ARCHITECTURES"],
    "latent_victim": ["LatentRecipe", "pretrain_latent_denoiser", "save_latent_surrogate"],
    "autoencoder": ["AutoencoderConfig", "train_autoencoder", "load_autoencoder", "encode_distribution"],
    "dreambooth": ["DreamBoothSettings", "DreamBoothError", "evaluate_dreambooth", "train_lora_victim",
                   "sample_lora_victim", "load_subject_images", "render_markdown", "LORA_WEIGHT_NAME"],
    "features": ["FittedFeatureExtractor", "FeatureExtractorUnavailable", "get_feature_extractor"],
    "attacks": ["ATTACKS", "jpeg", "resize", "blur"],
    "experiment": ["EvalSettings", "Scorer", "run_victims", "PixelRecipe", "VictimRecipe", "perturbation_cost",
                   "resize_all", "with_attacks", "data_hash"],
    "ablation": ["BASE", "VARIANTS", "run_ablation", "budget_sweep", "random_noise"],
    "latent_ablation": ["LATENT_BASE", "LATENT_VARIANTS", "LATENT_VICTIM", "LatentSetup", "run_latent_ablation"],
    "leads": ["LEADS", "run_leads"],
    "pipeline": ["evaluate_pair", "evaluate_bundled", "load_images", "split_holdout", "protect_arrays"],
    "metrics": ["psnr", "ssim", "frechet_distance", "precision_recall", "hwc_to_nchw", "linf_levels"],
}


@pytest.mark.parametrize("module", sorted(OLD_EVALUATE_NAMES))
def test_old_evaluate_paths_keep_working(module):
    import importlib
    import sys

    if module == "metrics":  # a package now, re-exporting the functions: no warning
        old = importlib.import_module("udp_datasets.evaluate.metrics")
    else:
        sys.modules.pop(f"udp_datasets.evaluate.{module}", None)  # the warning comes on first import
        with pytest.warns(DeprecationWarning, match=f"udp_datasets.evaluate.{module} moved"):
            old = importlib.import_module(f"udp_datasets.evaluate.{module}")
    missing = [name for name in OLD_EVALUATE_NAMES[module] if not hasattr(old, name)]
    assert not missing, f"udp_datasets.evaluate.{module} lost {missing}"
