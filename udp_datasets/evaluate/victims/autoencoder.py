"""A small, lossy, Stable-Diffusion-like VAE trained offline on real photographs.

No pretrained VAE can be downloaded here, yet latent-diffusion protection hinges on
what the encoder does to a small pixel perturbation. This module trains a
``diffusers.AutoencoderKL`` shaped like SD's (8x spatial downsampling, 4 latent
channels, four ``DownEncoderBlock2D`` levels) with SD's loss recipe minus the
perceptual and GAN terms: per-image summed L1 reconstruction + 1e-6 x KL. The
latent scaling factor is computed as SD's was (1 / std of the training latents)
and stored in the VAE config, so ``from_pretrained`` gives a drop-in SD-style VAE.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...models.denoiser_training import run_steps
from ...models.devices import resolve_device
from ..metrics.arrays import hwc_to_nchw
from ..metrics.fidelity import psnr

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AutoencoderConfig:
    """One VAE recipe; CPU-sized by default (about 5 minutes on one core)."""

    image_size: int = 64
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    """Four levels = 8x downsampling, as SD. (16, 32, ...) rather than (32, 64, ...) halves the
    cost of every PGD step through the encoder, the dominant cost of the latent ablation."""
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    train_steps: int = 1000
    batch_size: int = 16
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    kl_weight: float = 1e-6
    """SD's KL weight, relative to a reconstruction loss summed over the pixels of an image."""
    random_flip: bool = True
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d


@dataclass
class AutoencoderResult:
    path: str
    scaling_factor: float
    psnr_db: float
    """Reconstruction PSNR D(E(x)) vs x on the training images (posterior mean)."""
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0


def build_autoencoder(config: AutoencoderConfig):
    """A seeded, randomly initialised SD-shaped ``AutoencoderKL``."""
    from ..tiny_models import build_vae

    return build_vae(config.block_out_channels, config.latent_channels, config.layers_per_block,
                     config.norm_num_groups, config.image_size, config.seed)


def images_to_unit(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 arrays of one size -> (N, 3, H, W) float in [0, 1] (grey repeated to RGB).

    Not :func:`..metrics.arrays.hwc_to_nchw`: this keeps the channels-last memory layout the
    committed VAE was trained with (convolutions round differently on the other layout).
    """
    arr = np.stack([np.asarray(a, dtype=np.uint8) for a in images])
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255)


def unit_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, H, W, 3) uint8 (clamped, rounded)."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def encode_distribution(vae, images: Sequence[np.ndarray] | torch.Tensor, batch_size: int = 64,
                        flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled posterior (mean, std) of every image: ``scaling_factor * E(x)``, as SD trains on.

    ``images`` are uint8 arrays or a (N, 3, H, W) tensor in [0, 1]; ``flip`` encodes the mirror
    images (a victim's random flip happens in pixel space, before the encoder).
    """
    x = images if isinstance(images, torch.Tensor) else images_to_unit(images)
    if flip:
        x = x.flip(-1)
    dev = next(vae.parameters()).device
    scale = float(vae.config.scaling_factor)
    means, stds = [], []
    for i in range(0, x.shape[0], batch_size):
        dist = vae.encode(x[i:i + batch_size].to(dev) * 2 - 1).latent_dist
        means.append(dist.mean.float().cpu() * scale)
        stds.append(dist.std.float().cpu() * scale)
    return torch.cat(means), torch.cat(stds)


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Scaled latents -> (N, H, W, 3) uint8 images (``D(z / scaling_factor)``)."""
    dev = next(vae.parameters()).device
    scale = float(vae.config.scaling_factor)
    out = []
    for i in range(0, latents.shape[0], batch_size):
        img = vae.decode(latents[i:i + batch_size].to(dev) / scale).sample.float()
        out.append(unit_to_uint8((img + 1) / 2))
    return np.concatenate(out)


def reconstruct(vae, images: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """D(E(x)) with the posterior mean: what the VAE alone does to a set of images."""
    mean, _ = encode_distribution(vae, images, batch_size)
    return decode_latents(vae, mean, batch_size)


def load_autoencoder(path: str | Path, device: str = "auto"):
    """``AutoencoderKL.from_pretrained`` (safetensors), frozen, in eval mode."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(Path(path), use_safetensors=True).to(resolve_device(device)).eval()
    vae.requires_grad_(False)
    return vae


def train_autoencoder(images: Sequence[np.ndarray], config: AutoencoderConfig, output_dir: str | Path,
                      progress: bool = True) -> AutoencoderResult:
    """Train the VAE on ``images``, set its ``scaling_factor`` and ``save_pretrained`` it."""
    from diffusers.optimization import get_cosine_schedule_with_warmup

    start = time.perf_counter()
    dev = resolve_device(config.device)
    data = images_to_unit(images)
    if tuple(data.shape[-2:]) != (config.image_size, config.image_size):
        raise ValueError(f"images are {tuple(data.shape[-2:])} but the autoencoder is for "
                         f"{config.image_size} px; resize them first")
    vae = build_autoencoder(config).to(dev).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate, weight_decay=0.0)
    schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.train_steps)
    gen = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []  # per-pixel L1 on [-1, 1], readable (the optimised loss adds the KL term)
    bar = tqdm(range(config.train_steps), desc="train autoencoder", disable=not progress, mininterval=2)

    def loss_at(_: int) -> torch.Tensor:
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=gen)
        x = data[idx]
        if config.random_flip:
            flip = torch.rand(x.shape[0], generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        x = (x * 2 - 1).to(dev)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(dev)
        recon = vae.decode(z).sample
        # SD's recipe: L1 summed over each image's pixels, mean over the batch, + kl_weight * KL
        rec = (recon - x).abs().flatten(1).sum(1).mean()
        losses.append(float(rec.item()) / x[0].numel())
        return rec + config.kl_weight * posterior.kl().mean()

    def after_step(_: int, __: list[float]) -> None:
        if len(losses) % 50 == 0:
            bar.set_postfix(l1=f"{np.mean(losses[-50:]):.4f}")

    run_steps(bar, loss_at, optimizer, list(vae.parameters()), max_grad_norm=None, schedule=schedule,
              after_step=after_step)
    vae.eval()
    vae.requires_grad_(False)
    scale = latent_scaling_factor(vae, data, seed=config.seed)
    vae.register_to_config(scaling_factor=scale)
    psnr = reconstruction_psnr(vae, images)
    output_dir = Path(output_dir)
    vae.save_pretrained(output_dir, safe_serialization=True)
    seconds = time.perf_counter() - start
    (output_dir / "autoencoder_training.json").write_text(json.dumps(
        {"config": config.to_dict(), "scaling_factor": scale, "reconstruction_psnr_db": psnr,
         "num_images": len(images), "seconds": round(seconds, 1), "loss_history": losses}))
    logger.info("autoencoder: %d steps in %.0f s, reconstruction PSNR %.2f dB, scaling factor %.4f",
                config.train_steps, seconds, psnr, scale)
    return AutoencoderResult(path=str(output_dir), scaling_factor=scale, psnr_db=psnr, loss_history=losses,
                             seconds=seconds)


@torch.no_grad()
def latent_scaling_factor(vae, data: torch.Tensor, seed: int = 0, batch_size: int = 64) -> float:
    """1 / std of posterior samples of the (unscaled) latents, as SD's 0.18215 was computed."""
    dev = next(vae.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    zs = []
    for i in range(0, data.shape[0], batch_size):
        dist = vae.encode(data[i:i + batch_size].to(dev) * 2 - 1).latent_dist
        zs.append((dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen).to(dev)).float().cpu())
    return float(1.0 / torch.cat(zs).std().item())


def reconstruction_psnr(vae, images: Sequence[np.ndarray]) -> float:
    """Mean per-image PSNR (dB) of D(E(x)) against x on the 0-255 grid."""
    return float(psnr(hwc_to_nchw(images), hwc_to_nchw(reconstruct(vae, images))))
