"""Tiny autoencoders as latent VAEs: the shipped TAEF2 weights, diffusers' AutoencoderTiny, refusals."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from udp_datasets import ProtectionConfig, Protector, SurrogateError, load_surrogate
from udp_datasets.models.latent import save_latent_pair
from udp_datasets.models.tiny_autoencoder import (TAEF2_CONFIG, AutoencoderTinyPooled, bundled_taef2,
                                                  bundled_taef2_folder, load_autoencoder, load_taesd_halves)
from udp_datasets.sources.bundled import photo

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHIPPED = {"encoder.safetensors": "ed439d4f19057d2a3b8fb43e3caa9aff37f5b9fdbf707cddff57f5a8ae8d5068",
           "decoder.safetensors": "79b69df8dd742e179d3b929905310a39901a805840f9b2b8968d1bbf5f65d642"}


@pytest.fixture(scope="module")
def taef2():
    return bundled_taef2()


@pytest.fixture(scope="module")
def photos128() -> torch.Tensor:
    """Four real photographs, downscaled whole to 128x128, in [0, 1]."""
    arrays = [np.asarray(Image.fromarray(photo(n)).resize((128, 128), Image.Resampling.BICUBIC))
              for n in ("astronaut", "coffee", "chelsea", "rocket")]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1 / (a - b).pow(2).flatten(1).mean(1))


def _round_trip(vae, x01: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ((vae.decode(vae.encode(x01 * 2 - 1).latents).sample + 1) / 2).clamp(0, 1)


def test_shipped_weights_are_the_documented_files_with_their_licence():
    folder = bundled_taef2_folder()
    for name, digest in SHIPPED.items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert all(digest in (folder / "PROVENANCE.md").read_text() for digest in SHIPPED.values())


def test_taef2_round_trips_real_photographs(taef2, photos128):
    psnr = _psnr(_round_trip(taef2, photos128), photos128)
    assert psnr.min() > 24.0, psnr  # the upstream README measures 24.8-28.8 dB on such crops
    z = taef2.encode(photos128 * 2 - 1).latents
    assert z.shape == (4, 32, 16, 16)


def test_without_the_pooled_branch_the_weights_reconstruct_nothing(photos128):
    """The pooled branch is load-bearing: the same weights in plain AutoencoderTiny blocks fail."""
    plain = load_taesd_halves(bundled_taef2_folder())
    for layers in (plain.encoder.layers, plain.decoder.layers):
        for block in layers:
            if hasattr(block, "pool"):
                block.pool = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Identity(), torch.nn.Identity(),
                                                 torch.nn.Conv2d(64, 64, 1, bias=False).requires_grad_(False))
                torch.nn.init.zeros_(block.pool[3].weight)
    assert _psnr(_round_trip(plain, photos128), photos128).max() < 21.0


def test_gradients_reach_every_pixel_through_the_encoder(taef2, photos128):
    x = photos128[:1].clone().requires_grad_(True)
    taef2.encode(x * 2 - 1).latents.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs() > 0).float().mean() > 0.99


def test_save_pretrained_round_trip_is_exact(taef2, photos128, tmp_path):
    taef2.save_pretrained(tmp_path / "vae", safe_serialization=True)
    again = load_autoencoder(tmp_path / "vae")
    assert type(again) is AutoencoderTinyPooled
    with torch.no_grad():
        assert torch.equal(taef2.encode(photos128).latents, again.encode(photos128).latents)
    assert load_autoencoder(bundled_taef2_folder()).config.latent_channels == 32  # the two-file layout


def _tiny_latent_unet(channels: int):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=4, in_channels=channels, out_channels=channels, block_out_channels=(32, 32),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1, norm_num_groups=8)


def test_taef2_latent_pair_protects_within_budget_through_the_real_encoder(taef2, tmp_path):
    save_latent_pair(tmp_path / "pair", taef2, _tiny_latent_unet(32))
    surrogate = load_surrogate(str(tmp_path / "pair"))
    assert surrogate.kind == "latent" and surrogate.image_size == (32, 32) and surrogate.vae_factor == 8
    images = [np.asarray(Image.fromarray(photo(n)).resize((32, 32))) for n in ("astronaut", "coffee")]
    config = ProtectionConfig(surrogate=str(tmp_path / "pair"), objective="encoder", steps=5)
    results = Protector(config, progress=False).protect_images(images)
    assert all(0 < r.linf <= config.budget_levels for r in results)


def test_plain_autoencoder_tiny_folder_works_as_a_latent_vae(tmp_path):
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    vae = AutoencoderTiny(encoder_block_out_channels=(16, 16, 16, 16), decoder_block_out_channels=(16, 16, 16, 16),
                          latent_channels=4)
    save_latent_pair(tmp_path / "pair", vae, _tiny_latent_unet(4))
    surrogate = load_surrogate(str(tmp_path / "pair"))
    z = surrogate.encode(torch.rand(2, 3, 32, 32))
    assert z.shape == (2, 4, 4, 4)


def test_refusals_name_the_folder_and_the_fix(tmp_path):
    with pytest.raises(SurrogateError, match="encoder.safetensors"):
        load_taesd_halves(tmp_path)
    (tmp_path / "encoder.pth").write_bytes(b"pickle payload")
    with pytest.raises(SurrogateError, match="pickle"):
        load_autoencoder(tmp_path)
    wrong = dict(TAEF2_CONFIG, latent_channels=16)  # weights of another shape
    with pytest.raises(SurrogateError, match="do not fit"):
        load_taesd_halves(bundled_taef2_folder(), config=wrong)
