"""Latent surrogates (issue #7): tiny Stable Diffusion and AutoencoderKL + UNet2DModel folders
built in code, saved with ``save_pretrained`` and loaded through ``from_pretrained``."""

import json

import datasets
import numpy as np
import pytest
import torch

from udp_datasets import ProtectionConfig, Protector, SurrogateError, load_surrogate
from udp_datasets.cli.app import main
from udp_datasets.images import decode_png_pixels
from udp_datasets.models.latent import LatentSurrogate, prompts_for, target_pattern
from udp_datasets.method.pgd import sample_generator
from udp_datasets.evaluate.tiny_models import save_tiny_latent_pair, save_tiny_stable_diffusion

PROMPT = "a photo of sks person"
FAST = dict(steps=6, batch_size=8, fit_rounds=2, fit_surrogate_steps=4, fit_pgd_steps=2, fit_batch_size=8)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> str:
    return str(save_tiny_stable_diffusion(tmp_path_factory.mktemp("sd") / "tiny-sd"))


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory) -> str:
    return str(save_tiny_latent_pair(tmp_path_factory.mktemp("pair") / "tiny-pair"))


def _tensor(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def _objective(folder, **changes):
    config = ProtectionConfig(surrogate=folder, prompt=PROMPT, **{**FAST, **changes})
    protector = Protector(config, progress=False)
    protector.prepare_surrogate()
    return protector, protector.engine.objective


def test_both_layouts_load_through_from_pretrained(tiny_sd, tiny_pair):
    sd, pair = load_surrogate(tiny_sd), load_surrogate(tiny_pair)
    assert isinstance(sd, LatentSurrogate) and isinstance(pair, LatentSurrogate)
    assert sd.ref.kind == pair.ref.kind == "latent" and len(sd.ref.sha256) == 64
    assert sd.conditional and not pair.conditional
    assert sd.vae_factor == 8 and sd.image_size == (32, 32) and sd.model_shape == (4, 4, 4)
    emb = sd.encode_text([PROMPT, "another prompt"])
    assert emb.shape[0] == 2 and not torch.equal(emb[0], emb[1])


def test_protect_end_to_end_holds_the_budget_and_reaches_pixels(tiny_sd, photos32):
    protector, objective = _objective(tiny_sd, objective="adversarial", encoder_weight=0.5)
    big = [np.kron(a, np.ones((2, 2, 1), dtype=np.uint8)) for a in photos32[:3]]  # 64 px: resized for the VAE
    x = _tensor(big).requires_grad_(True)
    gens = [sample_generator(0, str(i)) for i in range(3)]
    loss = objective.loss_fn(gens, x.detach())(x + 0.01, 0)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    assert grad.shape == x.shape and (grad.abs().flatten(1).sum(1) > 0).all()  # through the VAE encoder
    results = protector.protect_images(big)
    for clean, r in zip(big, results):
        out = decode_png_pixels(r.png)
        assert out.shape == clean.shape
        assert 0 < np.abs(out.astype(int) - clean).max() <= 8


@pytest.mark.parametrize("objective,maximize", [("adversarial", True), ("unlearnable", False)])
def test_denoising_objectives_move_the_latent_loss_their_way(tiny_pair, photos32, objective, maximize, tmp_path):
    images = photos32[:6]
    protector = Protector(ProtectionConfig(surrogate=tiny_pair, objective=objective, timesteps="range", t_max=200,
                                           **{**FAST, "steps": 12}), progress=False)
    if objective == "unlearnable":
        protector.fit(images, output_dir=tmp_path / "fitted")
    protected = [decode_png_pixels(r.png) for r in protector.protect_images(images)]
    protector.prepare_surrogate()
    gens = lambda: [sample_generator(7, f"e{i}") for i in range(len(images))]  # noqa: E731
    clean_loss = protector.engine.objective.evaluate(_tensor(images), gens(), repeats=8)
    prot_loss = protector.engine.objective.evaluate(_tensor(protected), gens(), repeats=8)
    assert (prot_loss.mean() > clean_loss.mean()) == maximize


def test_encoder_objective_shifts_latents_more_than_random_noise(tiny_pair, photos32):
    images = photos32[:6]
    protector, _ = _objective(tiny_pair, objective="encoder", steps=10)
    surrogate = protector.prepare_surrogate()
    protected = [decode_png_pixels(r.png) for r in protector.protect_images(images)]
    rng = np.random.default_rng(0)
    noisy = [np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8) for a in images]
    with torch.no_grad():
        z = surrogate.encode(_tensor(images))
        shift = (surrogate.encode(_tensor(protected)) - z).flatten(1).norm(dim=1)
        noise_shift = (surrogate.encode(_tensor(noisy)) - z).flatten(1).norm(dim=1)
    assert shift.mean() > 1.5 * noise_shift.mean()


def test_pattern_target_pulls_latents_toward_the_pattern(tiny_pair, photos32):
    images = photos32[:4]
    protector, objective = _objective(tiny_pair, objective="encoder", encoder_target="pattern", steps=10)
    surrogate = protector.prepare_surrogate()
    protected = [decode_png_pixels(r.png) for r in protector.protect_images(images)]
    target = objective.reference(None)
    with torch.no_grad():
        before = (surrogate.encode(_tensor(images)) - target).flatten(1).norm(dim=1)
        after = (surrogate.encode(_tensor(protected)) - target).flatten(1).norm(dim=1)
    assert (after < before).all()
    assert target_pattern(16, 16).shape == (16, 16, 3)


def test_lora_fit_trains_adapters_only_and_saves_a_plain_pipeline(tiny_sd, photos32, tmp_path):
    config = ProtectionConfig(surrogate=tiny_sd, objective="unlearnable", prompt=PROMPT, fit_lora_rank=4, **FAST)
    protector = Protector(config, progress=False)
    protector.fit(photos32[:6], output_dir=tmp_path / "fitted")
    base, fitted = load_surrogate(tiny_sd), load_surrogate(str(tmp_path / "fitted"))
    assert fitted.conditional and fitted.ref.sha256 != base.ref.sha256
    assert not any("lora" in n for n, _ in fitted.unet.named_parameters())
    changed = {n for (n, a), (_, b) in zip(base.unet.named_parameters(), fitted.unet.named_parameters())
               if not torch.equal(a, b)}
    assert changed and all(any(k in n for k in ("to_q", "to_k", "to_v", "to_out")) for n in changed)
    for part in ("vae", "text_encoder"):  # frozen, as in Stable Diffusion fine-tuning
        for a, b in zip(getattr(base, part).parameters(), getattr(fitted, part).parameters()):
            assert torch.equal(a, b)
    assert json.loads((tmp_path / "fitted" / "udp_fit.json").read_text())["config"]["fit_lora_rank"] == 4


def test_captions_fill_the_prompt_template_in_dataset_map(tiny_sd, photos32):
    assert prompts_for("a photo of {caption}", ["cat", None], 2) == ["a photo of cat", "a photo of "]
    with pytest.raises(SurrogateError, match="needs a prompt"):
        prompts_for(None, None, 1)
    with pytest.raises(SurrogateError, match="caption_column"):
        prompts_for("{caption}", None, 1)
    ds = datasets.Dataset.from_dict({"image": photos32[:2], "text": ["red", "blue"]}).cast_column(
        "image", datasets.Image())
    config = ProtectionConfig(surrogate=tiny_sd, prompt="a photo of {caption}", caption_column="text", **FAST)
    out = Protector(config, progress=False).map(ds)
    assert len(out) == 2 and out[0]["text"] == "red"
    with pytest.raises(KeyError, match="caption column 'title'"):
        Protector(config.replace(caption_column="title"), progress=False).map(ds)


def test_clear_errors_for_misuse(tiny_sd, unlearnable_surrogate, photos32, tmp_path):
    with pytest.raises(SurrogateError, match="needs a prompt"):
        Protector(ProtectionConfig(surrogate=tiny_sd, **FAST), progress=False).protect_images(photos32[:1])
    with pytest.raises(SurrogateError, match="needs a latent surrogate"):
        Protector(ProtectionConfig(surrogate=unlearnable_surrogate, objective="encoder"),
                  progress=False).protect_images(photos32[:1])
    with pytest.raises(ValueError, match="no denoiser to fit"):
        Protector(ProtectionConfig(surrogate=tiny_sd, objective="encoder", prompt=PROMPT),
                  progress=False).fit(photos32[:2], output_dir=tmp_path / "x")
    sdxl = tmp_path / "sdxl"
    save_tiny_stable_diffusion(sdxl)
    (sdxl / "text_encoder_2").mkdir()
    with pytest.raises(SurrogateError, match="SDXL"):
        load_surrogate(str(sdxl))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_surrogate(tiny_pair, photos32, dtype):
    if dtype == "float16" and not torch.cuda.is_available():
        pytest.skip("float16 convolutions need a CUDA device (none here); bfloat16 covers CPU")
    protector = Protector(ProtectionConfig(surrogate=tiny_pair, objective="adversarial", dtype=dtype,
                                           gradient_checkpointing=True, **FAST), progress=False)
    results = protector.protect_images(photos32[:2])
    assert next(protector.prepare_surrogate().unet.parameters()).dtype == getattr(torch, dtype)
    for clean, r in zip(photos32[:2], results):
        assert 0 < np.abs(decode_png_pixels(r.png).astype(int) - clean).max() <= 8


def test_cli_fit_and_protect_with_a_stable_diffusion_folder(tiny_sd, photos32, tmp_path):
    from PIL import Image

    src = tmp_path / "art"
    src.mkdir()
    for i, a in enumerate(photos32[:4]):
        Image.fromarray(a).save(src / f"{i}.png")
    flags = ["--prompt", "a painting in the style of sks", "--steps", "4", "--batch-size", "4",
             "--fit-rounds", "1", "--fit-surrogate-steps", "2", "--fit-pgd-steps", "1"]
    fitted = tmp_path / "fitted"
    assert main(["fit", str(src), str(fitted), "--surrogate", tiny_sd, "--fit-lora-rank", "2", *flags]) == 0
    dst = tmp_path / "out"
    assert main(["protect", str(src), str(dst), "--surrogate", str(fitted), "--objective", "unlearnable",
                 "--encoder-weight", "1", *flags]) == 0
    summary = json.loads((dst / "udp_protection.json").read_text())
    assert summary["config"]["prompt"] == "a painting in the style of sks"
    assert summary["surrogate"]["kind"] == "latent"
    assert main(["verify", str(dst), "--source", str(src)]) == 0
    from udp_datasets.publish.card import render_card
    from udp_datasets.publish.verify import load_manifest, read_record

    card = str(render_card(read_record(dst), load_manifest(dst), repo_id="me/art", layout="arrow",
                           data_files=["data/*.arrow"]))
    assert "latent-space, UNet2DConditionModel" in card and "a painting in the style of sks" in card
