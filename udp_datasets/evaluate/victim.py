"""Victim models: what an unauthorised trainer would do with the published images.

An unconditional DDPM (diffusers ``UNet2DModel`` + ``DDPMScheduler``) trained with
an accelerate loop in the style of diffusers' ``train_unconditional.py``: random
flips, AdamW, cosine learning-rate decay with warm-up, optional EMA. The same
``VictimConfig`` and seed train the clean and the protected victim, so the only
difference between them is the data.

The default architecture deliberately differs from every built-in *surrogate*:
a protection that only fools its own surrogate is not a protection.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

VICTIM_ARCHITECTURES: dict[str, dict[str, Any]] = {
    # differs from the surrogates: wider last level, attention in the middle level, 2 layers
    "victim-tiny": dict(block_out_channels=(32, 64, 96),
                        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                        layers_per_block=1, norm_num_groups=16),
    "victim-small": dict(block_out_channels=(64, 128, 128, 256),
                         down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                         layers_per_block=2, norm_num_groups=32),
}


@dataclass(frozen=True)
class VictimConfig:
    """One training recipe, applied identically to clean and protected data."""

    architecture: str = "victim-tiny"
    resolution: int = 24
    train_steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float | None = 0.999
    random_flip: bool = True
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    sample_steps: int = 100
    """DDIM steps when sampling."""
    sample_eta: float = 1.0
    """DDIM eta: 1.0 is ancestral (DDPM-like) sampling. Deterministic eta=0 sampling turned the
    eps errors of small CPU-trained victims into high-frequency noise (measured, see
    docs/efficacy.md), which would hide any effect of the data behind sampler artefacts."""
    seed: int = 0
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VictimResult:
    pipeline_dir: str
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def final_loss(self, window: int = 100) -> float:
        tail = self.loss_history[-window:]
        return float(np.mean(tail)) if tail else math.nan


def build_victim(config: VictimConfig, channels: int):
    from diffusers import UNet2DModel

    if config.architecture not in VICTIM_ARCHITECTURES:
        raise ValueError(f"unknown victim architecture {config.architecture!r}; "
                         f"choose from {sorted(VICTIM_ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return UNet2DModel(sample_size=config.resolution, in_channels=channels, out_channels=channels,
                           **VICTIM_ARCHITECTURES[config.architecture])


def to_training_tensor(images: Sequence[np.ndarray], resolution: int) -> torch.Tensor:
    """(H, W, C) uint8 arrays -> (N, C, r, r) float in [-1, 1] (antialiased resize)."""
    import torch.nn.functional as F

    out = []
    for arr in images:
        x = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float().div(255)[None]
        if tuple(x.shape[-2:]) != (resolution, resolution):
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True,
                              align_corners=False)
        out.append(x.clamp(0, 1) * 2 - 1)
    return torch.cat(out)


def train_victim(images: Sequence[np.ndarray], config: VictimConfig, output_dir: str | Path,
                 desc: str = "victim", progress: bool = True) -> VictimResult:
    """Train a victim DDPM on ``images`` and save it with ``save_pretrained``."""
    from accelerate import Accelerator
    from diffusers import DDPMPipeline, DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    start = time.perf_counter()
    cpu = config.device == "cpu" or (config.device == "auto" and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=cpu)
    data = to_training_tensor(images, config.resolution)
    channels = data.shape[1]
    model = build_victim(config, channels)
    scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                              beta_schedule=config.beta_schedule)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-6)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.train_steps)
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=config.ema_decay) \
        if config.ema_decay else None
    if ema is not None:
        ema.to(accelerator.device)
    gen = torch.Generator().manual_seed(config.seed)
    losses: list[float] = []
    bar = tqdm(range(config.train_steps), desc=f"train {desc}", disable=not progress, mininterval=2)
    model.train()
    for _ in bar:
        idx = torch.randint(0, data.shape[0], (config.batch_size,), generator=gen)
        x0 = data[idx]
        if config.random_flip:
            flip = torch.rand(x0.shape[0], generator=gen) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, config.num_train_timesteps, (x0.shape[0],), generator=gen)
        x0, noise, t = x0.to(accelerator.device), noise.to(accelerator.device), t.to(accelerator.device)
        noisy = scheduler.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(model(noisy, t).sample, noise)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    unet = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(unet.parameters())
    output_dir = Path(output_dir)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(output_dir, safe_serialization=True)
    (output_dir / "victim_training.json").write_text(json.dumps(
        {"config": config.to_dict(), "loss_history": losses, "num_images": len(images)}))
    seconds = time.perf_counter() - start
    logger.info("victim %s: %d steps in %.0f s, final loss %.4f", desc, config.train_steps, seconds,
                float(np.mean(losses[-100:])))
    return VictimResult(pipeline_dir=str(output_dir), loss_history=losses, seconds=seconds)


@torch.no_grad()
def sample_victim(pipeline_dir: str | Path, num_images: int, seed: int = 0, steps: int = 100,
                  batch_size: int = 64, device: str = "auto", progress: bool = True,
                  eta: float = 1.0) -> np.ndarray:
    """DDIM samples with fixed seeds, (N, H, W, C) uint8; loads via ``from_pretrained``.

    The noise of each batch (initial and, with ``eta`` > 0, per step) comes from a CPU
    generator seeded by (seed, batch start), so samples do not depend on the device.
    """
    from diffusers import DDIMScheduler, UNet2DModel

    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    unet = UNet2DModel.from_pretrained(Path(pipeline_dir) / "unet", use_safetensors=True).to(dev).eval()
    scheduler = DDIMScheduler.from_pretrained(Path(pipeline_dir) / "scheduler")
    scheduler.set_timesteps(steps)
    size = unet.config.sample_size
    out = []
    for start in tqdm(range(0, num_images, batch_size), desc="sample", disable=not progress):
        n = min(batch_size, num_images - start)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        x = torch.randn((n, unet.config.in_channels, size, size), generator=gen).to(dev)
        for t in scheduler.timesteps:
            eps = unet(x, t).sample
            x = scheduler.step(eps, t, x, eta=eta, generator=gen).prev_sample
        img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out.append(img)
    return np.concatenate(out)
