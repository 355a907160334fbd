"""The Stable Diffusion (LoRA DreamBooth-style) evaluation on a tiny real SD folder, on CPU.

No test claims that protection works: the victims train a few steps on 32 px images.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from udp_datasets.cli.app import EXIT_OK, EXIT_USAGE, main
from udp_datasets.evaluate.experiments.evaluate_sd_command import evaluate_dreambooth
from udp_datasets.evaluate.victims.sd_lora import (LORA_WEIGHT_NAME, DreamBoothError, DreamBoothSettings,
                                                   load_components, load_subject_images, resolve_precision)
from udp_datasets.evaluate.victims.sd_lora_training import make_accelerator, train_lora_victim
from udp_datasets.evaluate.report import fmt
from test_evaluate import assert_report_moves_with_its_links

PROMPT = "a photo of sks person"
TINY = DreamBoothSettings(resolution=32, train_steps=4, batch_size=2, learning_rate=1e-3, num_samples=4,
                          sample_steps=3, sample_batch_size=2, device="cpu")


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    from udp_datasets.evaluate.tiny_models import save_tiny_stable_diffusion

    return str(save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd", image_size=32))


@pytest.fixture(scope="module")
def subject(tmp_path_factory) -> tuple[str, str]:
    """8 real photo patches (clean/) and a +-8-level noisy copy (protected/), same file names."""
    from udp_datasets.sources.bundled import photo_patches

    root = tmp_path_factory.mktemp("subject")
    (root / "clean").mkdir()
    (root / "protected").mkdir()
    rng = np.random.default_rng(0)
    for i, a in enumerate(photo_patches(size=32, count=8)):
        noisy = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(root / "clean" / f"img{i:02d}.png")
        Image.fromarray(noisy).save(root / "protected" / f"img{i:02d}.png")
    return str(root / "clean"), str(root / "protected")


def test_lora_victim_trains_only_lora_and_saves_loadable_weights(tiny_sd, subject, tmp_path, one_torch_thread):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    images = load_subject_images(subject[0])
    parts = load_components(tiny_sd, TINY)
    result = train_lora_victim(tiny_sd, images, PROMPT, tmp_path / "lora", TINY, progress=False, components=parts)
    assert len(result.loss_history) == TINY.train_steps and np.isfinite(result.final_loss())
    assert result.memory["device"] == "cpu" and result.memory["peak_mib"] > 0

    unet = parts["unet"]
    trainable = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert result.trainable_parameters == sum(p.numel() for n, p in unet.named_parameters() if n in trainable)
    assert not any(p.requires_grad for p in parts["vae"].parameters())
    assert not any(p.requires_grad for p in parts["text_encoder"].parameters())
    # the base UNet is unchanged: every non-LoRA weight equals the weight on disk
    base = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet").state_dict()
    trained = {n.replace(".base_layer", ""): p for n, p in unet.state_dict().items() if "lora_" not in n}
    assert set(trained) == set(base)
    assert all(torch.equal(trained[n], base[n]) for n in base)
    # LoRA B starts at zero ("gaussian" init); training moved it
    assert any(p.abs().sum() > 0 for n, p in unet.named_parameters() if "lora_B" in n)

    weights = tmp_path / "lora" / LORA_WEIGHT_NAME
    assert weights.stat().st_size > 0
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(tmp_path / "lora"), weight_name=LORA_WEIGHT_NAME)
    def lora_weights(module) -> dict[str, torch.Tensor]:  # adapter names differ ("default" vs "default_0")
        return {re.sub(r"\.(lora_[AB])\.[^.]+\.", r".\1.", n): p for n, p in module.state_dict().items()
                if "lora_" in n}

    loaded, ours = lora_weights(pipe.unet), lora_weights(unet)
    assert set(loaded) == set(ours) and ours
    assert all(torch.equal(loaded[n], ours[n]) for n in ours)
    log = json.loads((tmp_path / "lora" / "victim_training.json").read_text())
    assert log["loss_history"] == result.loss_history and log["num_images"] == 8


def _table(markdown: str, first_header: str) -> dict[str, dict[str, str]]:
    """Rows of the Markdown table whose first header cell is ``first_header``, as {row: {col: cell}}."""
    lines = markdown.splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith(f"| {first_header} |"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return rows


def test_evaluate_dreambooth_writes_grid_and_consistent_report(tiny_sd, subject, tmp_path, one_torch_thread):
    from udp_datasets.evaluate.report import COLUMNS

    out = tmp_path / "report"
    report = evaluate_dreambooth(tiny_sd, subject[0], subject[1], PROMPT, out, TINY, progress=False)
    for name in ("report.json", "report.md", "comparison.png", "loss_curves.png",
                 "victims/clean/samples.png", "victims/protected/samples.png",
                 f"victims/clean/{LORA_WEIGHT_NAME}", f"victims/protected/{LORA_WEIGHT_NAME}"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "report.json").read_text())
    assert saved["victims"] == json.loads(json.dumps(report["victims"]))
    assert set(saved["victims"]) == {"clean", "protected"}
    assert saved["memory"]["device"] == "cpu" and "CPU" in saved["memory"]["note"]
    assert saved["perturbation"]["protected"]["linf_levels"] == 8
    assert saved["victims"]["clean"]["fd_ratio_vs_clean"] == 1.0
    samples = np.load(out / "victims" / "clean" / "samples.npz")["samples"]
    assert samples.shape == (4, 32, 32, 3) and samples.dtype == np.uint8
    # comparison grid: 4 panels (clean / protected training images, clean / protected victims), 1 row of 4
    grid = Image.open(out / "comparison.png")
    assert grid.width == 4 * 4 * 128 + 3 * 8 and grid.height == 128 + 16

    md = (out / "report.md").read_text()
    table = _table(md, "training set")
    for name, scores in saved["victims"].items():
        for key, label, pattern in COLUMNS:
            if key in scores:
                assert table[name][label] == fmt(scores[key], pattern), (name, key)
    memory = _table(md, "victim")
    for name, scores in saved["victims"].items():
        assert memory[name]["peak memory, training (MiB)"] == fmt(scores["peak_memory_train_mib"], "{:.1f}")
        assert memory[name]["trainable LoRA parameters"] == str(scores["trainable_parameters"])
    cost = saved["perturbation"]["protected"]
    assert f"PSNR {cost['psnr_db']:.2f} dB" in md and f"max L-inf {cost['linf_levels']} levels" in md
    assert "noisy" in md and saved["verdict"] in md
    card = saved["card_markdown"]  # what the dataset card embeds: verdict, then the victims' table
    assert card.startswith(saved["verdict"] + "\n\n") and card == report["card_markdown"]
    assert "| training set | FD | FD / clean |" in card and "| protected |" in card
    assert saved["victims"]["clean"]["lora_weights"] == f"victims/clean/{LORA_WEIGHT_NAME}"
    assert_report_moves_with_its_links(out, tmp_path / "published")


def test_cli_evaluate_sd_end_to_end(tiny_sd, subject, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "cli-report"
    args = ["evaluate-sd", "--model", tiny_sd, "--clean", subject[0], "--protected", subject[1],
            "--prompt", PROMPT, "--out", str(out), "--steps", "2", "--lora-rank", "2", "--resolution", "32",
            "--num-samples", "2", "--sample-steps", "2", "--batch-size", "1", "--learning-rate", "1e-3",
            "--gradient-checkpointing", "--vae-slicing", "--device", "cpu",
            "--sample-prompt", "a photo of sks person", "--sample-prompt", "sks person smiling"]
    assert main(args) == EXIT_OK
    printed = capsys.readouterr().out
    assert "report:" in printed
    saved = json.loads((out / "report.json").read_text())
    assert saved["settings"]["lora_rank"] == 2 and saved["settings"]["gradient_checkpointing"] is True
    assert saved["sample_prompts"] == ["a photo of sks person", "sks person smiling"]
    assert len(json.loads((out / "victims/clean/victim_training.json").read_text())["loss_history"]) == 2
    assert re.search(r"FD / clean", (out / "report.md").read_text())


def test_cli_evaluate_sd_usage_errors(tiny_sd, subject, tmp_path, capsys):
    base = ["evaluate-sd", "--clean", subject[0], "--protected", subject[1], "--prompt", PROMPT,
            "--out", str(tmp_path / "r"), "--resolution", "32", "--device", "cpu"]
    assert main([*base, "--model", str(tmp_path / "no-such-model")]) == EXIT_USAGE
    assert "cannot load a Stable Diffusion model" in capsys.readouterr().err
    assert main([*base, "--model", tiny_sd, "--mixed-precision", "fp16"]) == EXIT_USAGE
    assert "needs a CUDA device" in capsys.readouterr().err
    assert main([*base, "--model", tiny_sd, "--limit", "5", "--resolution", "30"]) == EXIT_USAGE
    assert "multiple of 8" in capsys.readouterr().err
    with pytest.raises(DreamBoothError, match="same images in the same order"):
        evaluate_dreambooth(tiny_sd, subject[0], [np.zeros((32, 32, 3), np.uint8)] * 3, PROMPT, tmp_path / "x",
                            TINY, progress=False)


def test_mixed_precision_is_refused_on_cpu():
    with pytest.raises(DreamBoothError, match="needs a CUDA device"):
        resolve_precision(DreamBoothSettings(mixed_precision="bf16"), torch.device("cpu"))
    assert resolve_precision(DreamBoothSettings(), torch.device("cpu")) == ("no", torch.float32)


def test_an_earlier_accelerator_with_other_settings_does_not_block_a_victim():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    Accelerator(cpu=True, mixed_precision="bf16")  # e.g. another evaluation earlier in this process
    try:
        assert make_accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16/bf16 mixed precision needs a CUDA GPU; none here")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_lora_victim_on_cuda(tiny_sd, subject, tmp_path, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    settings = DreamBoothSettings(**{**TINY.to_dict(), "sample_prompts": (), "device": "cuda",
                                     "mixed_precision": precision, "gradient_checkpointing": True})
    parts = load_components(tiny_sd, settings, torch.float16 if precision == "fp16" else torch.bfloat16)
    result = train_lora_victim(tiny_sd, load_subject_images(subject[0]), PROMPT, tmp_path / "lora", settings,
                               progress=False, components=parts)
    assert np.isfinite(result.final_loss()) and result.memory["device"] == "cuda"
    lora = [p for n, p in parts["unet"].named_parameters() if "lora_" in n]
    assert lora and all(p.dtype == torch.float32 for p in lora)  # trainable weights stay fp32
    assert parts["vae"].dtype != torch.float32
    report = evaluate_dreambooth(tiny_sd, subject[0], subject[1], PROMPT, tmp_path / "r", settings, progress=False)
    assert report["mixed_precision"] == precision and report["memory"]["device"] == "cuda"
