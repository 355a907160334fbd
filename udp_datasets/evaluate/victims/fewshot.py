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
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

LATENT_CHANNELS = 32

FEWSHOT_UNETS: dict[str, dict[str, Any]] = {
    # the victim: 3 levels, attention at the two deepest (4x4 and 2x2), 4.7 M parameters
    "fewshot-victim": dict(block_out_channels=(64, 128, 128), layers_per_block=1, norm_num_groups=16,
                           attention_head_dim=32,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    # the protector's surrogate: 2 levels, 48/96 channels, 2 layers per block, 2.3 M parameters
    "fewshot-surrogate": dict(block_out_channels=(48, 96), layers_per_block=2, norm_num_groups=16,
                              attention_head_dim=32, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                              up_block_types=("AttnUpBlock2D", "UpBlock2D")),
}

LORA_TARGETS = {
    "attention": ("to_q", "to_k", "to_v", "to_out.0"),
    "attention+conv": ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "time_emb_proj"),
    "all": ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_shortcut", "time_emb_proj", "conv",
            "conv_in", "conv_out"),
}
"""peft target modules: diffusers' DreamBooth-LoRA layers (attention projections); those plus every
resnet convolution; or every convolution and linear layer (resamplers, ``conv_in``, ``conv_out`` too)."""


@dataclass(frozen=True)
class TrainRecipe:
    """One training run of a latent UNet (pretraining or fine-tuning), identical for every training set."""

    steps: int = 500
    learning_rate: float = 1e-3
    batch_size: int = 8
    warmup_steps: int = 0
    cosine: bool = False
    """Cosine decay of the learning rate to 0 after the warm-up (else constant)."""
    ema: float = 0.0
    """EMA decay of the weights that are sampled (0 = the trained weights themselves)."""
    lora_rank: int = 0
    """0: every weight trains (full fine-tuning); r > 0: LoRA adapters of rank r, base frozen."""
    lora_targets: str = "attention+conv"
    """Key of :data:`LORA_TARGETS`."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatentData:
    """Model-space latents of a training set and of its mirror images, (N, 32, 8, 8) each."""

    z: torch.Tensor
    z_flip: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


def build_unet(kind: str, latent_size: int = 8, seed: int = 0):
    """A seeded ``UNet2DModel`` of :data:`FEWSHOT_UNETS` for ``latent_size`` x ``latent_size`` latents."""
    from diffusers import UNet2DModel

    if kind not in FEWSHOT_UNETS:
        raise ValueError(f"unknown few-shot UNet {kind!r}; choose from {sorted(FEWSHOT_UNETS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=latent_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                           **FEWSHOT_UNETS[kind])


def normalised_taef2(stats: dict[str, Any] | None = None, per_channel: bool = True):
    """The bundled TAEF2 with a latent normalisation in its config, from corpus statistics
    (:func:`latent_statistics`): per channel (``latents_mean`` / ``latents_std``) or one scalar pair
    (``shift_factor`` / ``scaling_factor``). ``None``: raw latents (shift 0, scale 1)."""
    from ...models.tiny_autoencoder import bundled_taef2

    vae = bundled_taef2()
    if stats is not None and per_channel:
        vae.register_to_config(latents_mean=[float(v) for v in stats["channel_mean"]],
                               latents_std=[float(v) for v in stats["channel_std"]])
    elif stats is not None:
        vae.register_to_config(shift_factor=float(stats["shift"]), scaling_factor=float(stats["scale"]))
    return vae.requires_grad_(False)


def latent_statistics(raw: torch.Tensor) -> dict[str, Any]:
    """Both normalisations of raw latents (N, C, h, w): scalar (mean, 1 / std) and per channel."""
    return {"shift": float(raw.mean()), "scale": float(1 / raw.std()),
            "channel_mean": raw.mean((0, 2, 3)).tolist(), "channel_std": raw.std((0, 2, 3)).tolist()}


def normalisation(vae):
    from ...models.latent import latent_normalisation

    return latent_normalisation(vae.config)


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float().div(255)


def to_uint8(x01: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8."""
    return x01.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def raw_latents(vae, x01: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """TAEF2 latents before normalisation (diffusers' [-1, 1] pixel convention)."""
    return torch.cat([vae.encode(x01[i:i + batch] * 2 - 1).latents for i in range(0, x01.shape[0], batch)])


@torch.no_grad()
def encode(vae, x01: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Pixels in [0, 1] -> model-space latents ``(E(x) - shift) * scale``."""
    return normalisation(vae).normalise(raw_latents(vae, x01, batch))


@torch.no_grad()
def decode(vae, z: torch.Tensor, batch: int = 64) -> np.ndarray:
    """Model-space latents -> (N, H, W, 3) uint8 images."""
    norm = normalisation(vae)
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


def noise_schedule():
    """Stable Diffusion's scaled-linear DDPM schedule (the latent pairs' scheduler)."""
    from ...models.latent import sd_scheduler

    return sd_scheduler()


def lr_factor(step: int, recipe: TrainRecipe) -> float:
    """Learning-rate multiplier at ``step`` (1-based): linear warm-up, then constant or cosine to 0."""
    warm = min(1.0, step / recipe.warmup_steps) if recipe.warmup_steps else 1.0
    if not recipe.cosine:
        return warm
    progress = max(0, step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return warm * 0.5 * (1 + math.cos(math.pi * progress))


def train_unet(unet: torch.nn.Module, data: LatentData, recipe: TrainRecipe, seed: int,
               params: list[torch.nn.Parameter] | None = None, desc: str | None = None,
               checkpoints: Sequence[int] = ()) -> tuple[torch.nn.Module, list[float], dict[int, dict]]:
    """Epsilon-prediction training of ``unet`` in place; every random draw comes from ``seed``.

    Returns (the model to sample: the EMA copy or ``unet``, the loss per step, {step: state dict}
    for ``checkpoints``). ``params`` default to every parameter that requires a gradient.
    """
    scheduler = noise_schedule()
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in unet.parameters() if p.requires_grad] if params is None else params
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    ema = copy.deepcopy(unet).requires_grad_(False) if recipe.ema > 0 else None
    losses, saved = [], {}
    unet.train()
    for step in tqdm(range(1, recipe.steps + 1), desc=desc, disable=desc is None, mininterval=5):
        idx = torch.randint(0, data.z.shape[0], (recipe.batch_size,), generator=gen)
        flip = torch.rand(recipe.batch_size, generator=gen) < 0.5
        z0 = torch.where(flip.view(-1, 1, 1, 1), data.z_flip[idx], data.z[idx])
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.batch_size,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate * lr_factor(step, recipe)
        loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(z0, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if ema is not None:
            decay = min(recipe.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - decay)
        losses.append(float(loss.detach()))
        if step in checkpoints:
            saved[step] = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    unet.eval()
    return (ema if ema is not None else unet).eval(), losses, saved


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
