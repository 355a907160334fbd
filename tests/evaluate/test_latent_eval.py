"""Latent-diffusion evaluation on tiny settings: VAE, pretrained-then-fine-tuned latent victims,
the latent ablation's files. No test claims that protection works (docs/efficacy.md does)."""

import json
import re

import numpy as np
import pytest

from udp_datasets.sources.bundled import photo_patches
from udp_datasets.evaluate.victims.autoencoder import (AutoencoderConfig, encode_distribution, load_autoencoder,
                                                      reconstruct, train_autoencoder)
from udp_datasets.evaluate.victims.pixel import VictimConfig

TINY_AE = AutoencoderConfig(image_size=32, block_out_channels=(8, 8, 16, 16), train_steps=4, batch_size=4,
                            warmup_steps=1)
TINY_LATENT_VICTIM = VictimConfig(architecture="latent-victim", resolution=32, train_steps=4, batch_size=4,
                                  warmup_steps=1, sample_steps=3)


@pytest.fixture(scope="module")
def patches32():
    return photo_patches(32, 24, seed=4)


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory, patches32):
    directory = tmp_path_factory.mktemp("latent") / "vae"
    train_autoencoder(patches32[:12], TINY_AE, directory, progress=False)
    return directory


def test_autoencoder_trains_saves_and_loads_with_scaling_factor(tiny_vae_dir, patches32, one_torch_thread):
    from diffusers import AutoencoderKL

    log = json.loads((tiny_vae_dir / "autoencoder_training.json").read_text())
    assert len(log["loss_history"]) == 4 and np.isfinite(log["reconstruction_psnr_db"])
    assert list(tiny_vae_dir.glob("*.safetensors"))
    vae = AutoencoderKL.from_pretrained(tiny_vae_dir, use_safetensors=True)
    assert vae.config.scaling_factor == pytest.approx(log["scaling_factor"]) and vae.config.scaling_factor != 0.18215
    assert vae.config.block_out_channels == [8, 8, 16, 16]  # 4 levels: 8x downsampling, as SD
    mean, std = encode_distribution(load_autoencoder(tiny_vae_dir, device="cpu"), patches32[:5])
    assert mean.shape == (5, 4, 4, 4) and std.shape == mean.shape
    rec = reconstruct(load_autoencoder(tiny_vae_dir, device="cpu"), patches32[:3])
    assert rec.shape == (3, 32, 32, 3) and rec.dtype == np.uint8


def test_latent_victim_pretrain_finetune_sample_decode(tiny_vae_dir, patches32, tmp_path, one_torch_thread):
    from udp_datasets.evaluate.victims.latent import LatentRecipe, pretrain_latent_denoiser

    init = pretrain_latent_denoiser(patches32[:12], TINY_LATENT_VICTIM, tiny_vae_dir, tmp_path / "pre",
                                    progress=False)
    stamp = (init / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert pretrain_latent_denoiser(patches32[:12], TINY_LATENT_VICTIM, tiny_vae_dir, tmp_path / "pre",
                                    progress=False) == init  # cached: not trained again
    assert (init / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    recipe = LatentRecipe(TINY_LATENT_VICTIM, tiny_vae_dir, init)
    losses = recipe.train(patches32[12:20], tmp_path / "v", "victim", progress=False)
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert json.loads((tmp_path / "v" / "victim_training.json").read_text())["init_dir"] == str(init)
    a = recipe.sample(tmp_path / "v", 3, seed=1, progress=False)
    b = recipe.sample(tmp_path / "v", 3, seed=1, progress=False)
    assert a.shape == (3, 32, 32, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(tmp_path / "v" / "unet")
    assert unet.config.sample_size == 4 and unet.config.in_channels == 4


def test_latent_ablation_end_to_end_writes_consistent_tables(tmp_path, one_torch_thread):
    from udp_datasets.evaluate.experiments.latent_ablation import (LATENT_BASE, LATENT_VARIANTS, LatentSetup,
                                                                   run_latent_ablation)
    from udp_datasets.evaluate.experiments.victim_runs import EvalSettings

    setup = LatentSetup(size=32, pretrain_count=12, train_count=8, holdout_count=6, autoencoder=TINY_AE,
                        pretrain_steps=3, surrogate_steps=3)
    settings = EvalSettings(victim=TINY_LATENT_VICTIM, num_samples=6, attacks=())
    base = LATENT_BASE.replace(steps=2, fit_rounds=1, fit_surrogate_steps=2, fit_pgd_steps=1, fit_batch_size=4,
                               batch_size=8)
    variants = {k: LATENT_VARIANTS[k] for k in ("adversarial+eudp", "unlearnable+eudp", "encoder(away)",
                                               "adversarial+eudp+encoder")}
    out = tmp_path / "abl"
    result = run_latent_ablation(out, settings, setup, base, variants, levels=(8, 16), progress=False)
    saved = json.loads((out / "latent_ablation.json").read_text())
    names = {"clean", "clean (reshuffled)", "random-noise", *variants}
    assert set(saved["victims"]) == names | {"reference"}
    assert saved["victims"]["clean"]["fd_ratio_vs_clean"] == 1.0
    assert saved["victims"]["clean"]["vae_fd_ratio_vs_clean"] == 1.0  # vs D(E(held-out)): the VAE's blur removed
    assert {"decoded_training_fd", "vae_fd"} <= set(saved["victims"]["reference"]["clean_train_vs_holdout"])
    assert set(saved["amplification"]) == names - {"clean", "clean (reshuffled)"}
    assert set(saved["budget_sweep"]) == {"8", "16"} and saved["best_variant"] in variants
    for name, cost in saved["perturbation"].items():
        assert 0 < cost["linf_levels"] <= 8, name
    assert 0 < saved["budget_sweep"]["16"]["linf_levels"] <= 16
    table = (out / "latent_ablation_table.md").read_text()
    for name in names:
        fd = saved["victims"][name]["fd"]
        assert re.search(rf"\| {re.escape(name)} \| {fd:.3f} \|", table), name
    for name, amp in saved["amplification"].items():
        assert f"| {name} | {amp['pixel_shift']:.4f} | {amp['latent_shift']:.4f} |" in table
    assert 0 < saved["victims"]["random-noise"]["sample_psnr_vs_clean_victim_db"] <= 100
    assert "sample_psnr_vs_clean_victim_db" in saved["budget_sweep"]["16"]
    for png in ("latent_samples.png", "latent_samples_zoom.png", "latent_protected.png", "latent_budget_sweep.png"):
        assert (out / png).stat().st_size > 0
    assert result["victims"]["clean"]["fd"] == saved["victims"]["clean"]["fd"]
    # resumable: a rerun reuses every cached stage and reproduces the numbers
    weights = sorted((out / "pretrained").glob("*/unet/*.safetensors")) + sorted(out.glob("autoencoder/*.safetensors"))
    stamps = [w.stat().st_mtime_ns for w in weights]
    again = run_latent_ablation(out, settings, setup, base, variants, levels=(8, 16), progress=False)
    assert again["victims"]["random-noise"]["fd"] == saved["victims"]["random-noise"]["fd"]
    assert len(weights) == 3 and [w.stat().st_mtime_ns for w in weights] == stamps  # nothing retrained


def test_cli_latent_ablation_passes_its_sizes(monkeypatch, tmp_path, capsys):
    from udp_datasets.cli.app import main
    from udp_datasets.evaluate.experiments import latent_ablation

    seen = {}

    def fake(out, settings, setup, sweep=True):
        seen.update(out=out, settings=settings, setup=setup, sweep=sweep)
        return {"victims": {"clean": {"fd_ratio_vs_clean": 1.0}}, "seconds": 0.0}

    monkeypatch.setattr(latent_ablation, "run_latent_ablation", fake)
    assert main(["latent-ablation", "--out", str(tmp_path), "--train-count", "7", "--vae-steps", "3",
                 "--victim-steps", "5", "--num-samples", "9", "--no-sweep"]) == 0
    assert seen["setup"].train_count == 7 and seen["setup"].autoencoder.train_steps == 3
    assert seen["settings"].victim.train_steps == 5 and seen["settings"].victim.architecture == "latent-victim"
    assert seen["settings"].num_samples == 9 and seen["sweep"] is False
    assert "latent_ablation_table.md" in capsys.readouterr().out
