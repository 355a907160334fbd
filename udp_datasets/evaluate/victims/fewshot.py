"""Few-shot latent victims: a small latent UNet on TAEF2 latents, fine-tuned (fully or with LoRA) on one subject.

The field's regime (METHOD.md, "What has been measured"): a latent diffusion model pretrained on
generic images is fine-tuned on a few images of one subject through its real VAE encoder. Here the
VAE is TAEF2, the pretrained tiny autoencoder the package ships (``models.tiny_autoencoder``), and
the denoiser a ``UNet2DModel`` on its 32 x 8 x 8 latents of 64 px images:

- model space ``z = (E(x) - shift) * scale`` (:class:`~udp_datasets.models.latent.LatentNormalisation`),
  either **per channel** (each of the 32 channels standardised by its corpus mean and std, stored as
  the VAE config's ``latents_mean`` / ``latents_std``, as FLUX.2 standardises its latents) or with one
  scalar ``shift`` / ``scale`` (``shift_factor`` / ``scaling_factor``); either way a latent pair of
  this VAE and any UNet here is read by :func:`udp_datasets.load_surrogate` unchanged;
- Stable Diffusion's scaled-linear noise schedule (1000 steps), epsilon prediction;
- horizontal flips: the latents of the mirrored images are encoded once beside the originals (a
  mirrored latent is not the latent of the mirrored image);
- training: AdamW, linear warm-up then cosine decay, gradient clipping 1, optional EMA; in memory
  (a few hundred steps on 8-20 images: no pipeline on disk per victim);
- LoRA (peft) adapters on chosen layers, base weights frozen (:func:`add_lora`);
- sampling: DDIM with seeded CPU generators, decoded by TAEF2.

:data:`FEWSHOT_UNETS` holds two architectures: the victim and, shaped and seeded differently, the
protector's surrogate, so a protection never attacks the model it is judged on.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import numpy as np
import torch

from ...models.denoiser_training import (FEWSHOT_UNETS, LATENT_CHANNELS, LatentData, TrainRecipe,  # noqa: F401
                                         TrainState, build_unet, latent_statistics, lr_factor, noise_schedule,
                                         normalised_taef2, raw_latents, to_tensor, train_unet)
from ...models.latent import latent_normalisation

logger = logging.getLogger(__name__)

LORA_TARGETS = {
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    "attention+conv": ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"),
    "all": ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv",
            "conv_in", "conv_out"),
}
"""peft target modules: diffusers' DreamBooth-LoRA layers (attention projections); those plus every
resnet convolution; or every convolution and linear layer (resamplers, ``conv_in``, ``conv_out`` too)."""


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return x01.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def encode(vae, x01: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Pixels in [0, 1] -> model-space latents ``(E(x) - shift) * scale``."""
    return latent_normalisation(vae.config).normalise(raw_latents(vae, x01, batch))


@torch.no_grad()
def decode(vae, z: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Model-space latents -> (N, H, W, 3) uint8 images."""
    norm = latent_normalisation(vae.config)
    out = [vae.decode(norm.denormalise(z[i:i + batch])).sample for i in range(0, z.shape[0], batch)]
    return to_uint8((torch.cat(out) + 1) / 2)


def latent_data(vae, images: Sequence[np.ndarray]) -> LatentData:
    """The training latents of ``images`` and of their mirror images."""
    x = to_tensor(images)
    return LatentData(encode(vae, x), encode(vae, x.flip(-1)))


def add_lora(unet: torch.nn.Module, rank: int, targets: str = "attention+conv") -> list[torch.nn.Parameter]:
    """LoRA adapters (peft, Gaussian A, zero B, alpha = rank) on ``LORA_TARGETS[targets]``; every other
    weight is frozen. Returns the adapters' parameters (the only ones that train)."""
    from peft import LoraConfig, inject_adapter_in_model

    unet.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                       target_modules=list(LORA_TARGETS[targets])), unet)
    params = [p for name, p in unet.named_parameters() if "lora_" in name]
    for p in params:
        p.requires_grad_(True)
    return params


def finetune(base: torch.nn.Module, data: LatentData, recipe: TrainRecipe, seed: int,
             desc: str | None = None) -> tuple[torch.nn.Module, list[float]]:
    """A copy of the pretrained ``base`` fine-tuned on ``data``: fully, or LoRA if ``recipe.lora_rank``.

    The same seed gives the same adapter initialisation, batches, timesteps and noise whatever the
    training set, so victims of one seed differ only by their data.
    """
    unet = copy.deepcopy(base)
    params = None
    if recipe.lora_rank > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            params = add_lora(unet, recipe.lora_rank, recipe.lora_targets)
    else:
        unet.requires_grad_(True)
    model, losses, _ = train_unet(unet, data, recipe, seed, params=params, desc=desc)
    return model, losses


@torch.no_grad()
def sample(unet: torch.nn.Module, count: int, seed: int, steps: int = 50, eta: float = 1.0,
           batch: int = 64) -> torch.Tensor:
    """DDIM samples (model space) from seeded CPU generators: the same seed gives every victim the
    same starting noise and, with ``eta`` > 0, the same per-step noise."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(noise_schedule().config)
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    out = []
    for start in range(0, count, batch):
        n = min(batch, count - start)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        z = torch.randn((n, unet.config.in_channels, size, size), generator=gen)
        for t in scheduler.timesteps:
            z = scheduler.step(unet(z, t).sample, t, z, eta=eta, generator=gen).prev_sample
        out.append(z)
    return torch.cat(out)
