"""Pixel-space victims: what an unauthorised trainer would do with the published images.

An unconditional DDPM (diffusers ``UNet2DModel`` + ``DDPMScheduler``) trained with
an accelerate loop in the style of diffusers' ``train_unconditional.py``: random
flips, AdamW, cosine learning-rate decay with warm-up, optional EMA. The same
``VictimConfig`` and seed train the clean and the protected victim, so the only
difference between them is the data.

The default architecture deliberately differs from every built-in *surrogate*:
a protection that only fools its own surrogate is not a protection.

:func:`train_denoiser` (over the one training loop, :func:`~udp_datasets.models.denoiser_training.run_steps`)
and :func:`sample_tensors` are the victims' DDPM training and DDIM sampler; the latent victims
(:mod:`.latent`) feed them latents instead of pixels.
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

from ...config import ConfigError
from ...models.denoiser_training import epsilon_loss, run_steps
from ...models.devices import resolve_device
from ..data import Images

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
    # latent victims (4 x 8 x 8 latents of 64 px images): wider than, and shaped unlike, the
    # latent surrogate (tiny_models.build_tiny_latent_unet: 2 levels of 32/64 channels)
    "latent-victim": dict(block_out_channels=(64, 128, 128),
                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                          layers_per_block=1, norm_num_groups=32),
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

    def __post_init__(self) -> None:
        # checked here, not by the sampler: a bad value would otherwise fail only after every victim trained
        if self.train_steps < 1 or self.batch_size < 1:
            raise ConfigError(f"victim train_steps {self.train_steps} and batch_size {self.batch_size}: both >= 1")
        if not 1 <= self.sample_steps <= self.num_train_timesteps:
            raise ConfigError(f"victim sample_steps {self.sample_steps}: DDIM takes 1 to num_train_timesteps "
                              f"({self.num_train_timesteps}) steps")
        if not self.sample_eta >= 0:
            raise ConfigError(f"victim sample_eta {self.sample_eta}: >= 0 (0 deterministic DDIM, 1 ancestral)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def final_loss(loss_history: Sequence[float], window: int = 100) -> float:
    """Mean of the last ``window`` training losses (NaN if there are none): a victim's final loss."""
    tail = list(loss_history)[-window:]
    return float(np.mean(tail)) if tail else math.nan


@dataclass
class VictimResult:
    pipeline_dir: str
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def final_loss(self, window: int = 100) -> float:
        return final_loss(self.loss_history, window)


def build_victim(config: VictimConfig, channels: int, sample_size: int | None = None):
    """The seeded victim UNet; ``sample_size`` overrides ``config.resolution`` (latent victims)."""
    from diffusers import UNet2DModel

    if config.architecture not in VICTIM_ARCHITECTURES:
        raise ValueError(f"unknown victim architecture {config.architecture!r}; "
                         f"choose from {sorted(VICTIM_ARCHITECTURES)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return UNet2DModel(sample_size=sample_size or config.resolution, in_channels=channels,
                           out_channels=channels, **VICTIM_ARCHITECTURES[config.architecture])


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
    """Train a pixel-space victim DDPM on ``images`` and save it with ``save_pretrained``."""
    return train_denoiser(to_training_tensor(images, config.resolution), config, output_dir, desc=desc,
                          progress=progress, log_extra={"num_images": len(images)})


def train_denoiser(data: torch.Tensor, config: VictimConfig, output_dir: str | Path, *, desc: str = "victim",
                   progress: bool = True, model: torch.nn.Module | None = None, init_dir: str | Path | None = None,
                   scheduler: Any = None, flipped: torch.Tensor | None = None, std: torch.Tensor | None = None,
                   flipped_std: torch.Tensor | None = None, log_extra: dict[str, Any] | None = None) -> VictimResult:
    """The victims' training loop on a tensor of x_0 samples (pixels in [-1, 1] or scaled latents).

    One loop for pixel and latent victims, so they differ only in what they are fed:

    - ``init_dir``: start from a saved pipeline folder (``unet/`` + ``scheduler/``) instead of a
      fresh ``config.architecture``; its scheduler is kept (fine-tuning a pretrained model).
    - ``model`` / ``scheduler``: train a given UNet / noise schedule (e.g. a surrogate's).
    - ``flipped``: the mirror images' samples, used by ``random_flip`` instead of flipping ``data``
      (a latent of a mirrored image is not the mirrored latent).
    - ``std`` (and ``flipped_std``): per-element posterior std; every step then draws
      ``x_0 = data + std * N(0, 1)``, as SD fine-tuning calls ``latent_dist.sample()``.
    """
    from accelerate import Accelerator
    from diffusers import DDPMPipeline

    start = time.perf_counter()
    accelerator = Accelerator(cpu=resolve_device(config.device).type == "cpu")
    model, scheduler = _denoiser_and_schedule(config, data, model, init_dir, scheduler)
    if flipped is not None and flipped.shape != data.shape:
        raise ValueError(f"flipped has shape {tuple(flipped.shape)}, data {tuple(data.shape)}")
    unet, losses = _fit_denoiser(accelerator, model, scheduler, config, desc, progress,
                                 _Batches(data, config, flipped, std, flipped_std))
    output_dir = Path(output_dir)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(output_dir, safe_serialization=True)
    log = {"config": config.to_dict(), "loss_history": losses, **(log_extra or {})}
    if init_dir is not None:
        log["init_dir"] = str(init_dir)
    (output_dir / "victim_training.json").write_text(json.dumps(log))
    seconds = time.perf_counter() - start
    logger.info("victim %s: %d steps in %.0f s, final loss %.4f", desc, config.train_steps, seconds,
                final_loss(losses))
    return VictimResult(pipeline_dir=str(output_dir), loss_history=losses, seconds=seconds)


def _denoiser_and_schedule(config: VictimConfig, data: torch.Tensor, model: torch.nn.Module | None,
                           init_dir: str | Path | None, scheduler: Any) -> tuple[torch.nn.Module, Any]:
    """The UNet and DDPM schedule to train: loaded from ``init_dir``, given, or fresh from ``config``."""
    from diffusers import DDPMScheduler, UNet2DModel

    if init_dir is not None:
        model = UNet2DModel.from_pretrained(Path(init_dir) / "unet", use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(Path(init_dir) / "scheduler")
    if model is None:
        model = build_victim(config, data.shape[1], sample_size=data.shape[-1])
    if scheduler is None:
        scheduler = DDPMScheduler(num_train_timesteps=config.num_train_timesteps,
                                  beta_schedule=config.beta_schedule)
    return model, scheduler


class _Batches:
    """Seeded training batches of x_0: random indices, random flips, fresh posterior samples."""

    def __init__(self, data: torch.Tensor, config: VictimConfig, flipped: torch.Tensor | None,
                 std: torch.Tensor | None, flipped_std: torch.Tensor | None):
        self.data, self.config, self.flipped, self.std, self.flipped_std = data, config, flipped, std, flipped_std

    def draw(self, gen: torch.Generator, num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x0, noise, t) of one batch; the draws from ``gen`` keep one fixed order."""
        config, std, flipped, flipped_std = self.config, self.std, self.flipped, self.flipped_std
        idx = torch.randint(0, self.data.shape[0], (config.batch_size,), generator=gen)
        x0 = self.data[idx]
        sd = std[idx] if std is not None else None
        if config.random_flip:
            flip = torch.rand(x0.shape[0], generator=gen) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1) if flipped is None else flipped[idx], x0)
            if sd is not None:
                sd = torch.where(flip.view(-1, 1, 1, 1), sd.flip(-1) if flipped_std is None else flipped_std[idx], sd)
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, num_train_timesteps, (x0.shape[0],), generator=gen)
        if sd is not None:  # a fresh posterior sample of each latent
            x0 = x0 + sd * torch.randn(x0.shape, generator=gen)
        return x0, noise, t


def _fit_denoiser(accelerator: Any, model: torch.nn.Module, scheduler: Any, config: VictimConfig, desc: str,
                  progress: bool, batches: _Batches) -> tuple[torch.nn.Module, list[float]]:
    """AdamW + cosine warm-up + optional EMA on the epsilon loss, through the one training loop
    (:func:`~udp_datasets.models.denoiser_training.run_steps`); the trained (EMA) UNet and its losses."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    num_train_timesteps = scheduler.config.num_train_timesteps
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=1e-6)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.train_steps)
    model, optimizer, lr_schedule = accelerator.prepare(model, optimizer, lr_schedule)
    ema = EMAModel(accelerator.unwrap_model(model).parameters(), decay=config.ema_decay) \
        if config.ema_decay else None
    if ema is not None:
        ema.to(accelerator.device)
    gen = torch.Generator().manual_seed(config.seed)
    bar = tqdm(range(config.train_steps), desc=f"train {desc}", disable=not progress, mininterval=2)

    def loss_at(_: int) -> torch.Tensor:
        x0, noise, t = (v.to(accelerator.device) for v in batches.draw(gen, num_train_timesteps))
        return epsilon_loss(model, scheduler, x0, noise, t)

    def after_step(_: int, losses: list[float]) -> None:
        if ema is not None:
            ema.step(accelerator.unwrap_model(model).parameters())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")

    model.train()
    losses = run_steps(bar, loss_at, optimizer, list(model.parameters()), schedule=lr_schedule,
                       accelerator=accelerator, after_step=after_step)
    unet = accelerator.unwrap_model(model)
    if ema is not None:
        ema.copy_to(unet.parameters())
    return unet, losses


def sample_victim(pipeline_dir: str | Path, num_images: int, seed: int = 0, steps: int = 100,
                  batch_size: int = 64, device: str = "auto", progress: bool = True,
                  eta: float = 1.0) -> np.ndarray:
    """DDIM samples of a pixel victim with fixed seeds, (N, H, W, C) uint8."""
    x = sample_tensors(pipeline_dir, num_images, seed=seed, steps=steps, batch_size=batch_size, device=device,
                       progress=progress, eta=eta)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def sample_tensors(pipeline_dir: str | Path, num_images: int, seed: int = 0, steps: int = 100,
                   batch_size: int = 64, device: str = "auto", progress: bool = True,
                   eta: float = 1.0) -> torch.Tensor:
    """Raw DDIM samples (N, C, h, w) on the CPU, in the model's space; loads via ``from_pretrained``.

    The noise of each batch (initial and, with ``eta`` > 0, per step) comes from a CPU
    generator seeded by (seed, batch start), so samples do not depend on the device.
    """
    from diffusers import DDIMScheduler, UNet2DModel

    dev = resolve_device(device)
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
        out.append(x.float().cpu())
    return torch.cat(out)


class PixelRecipe:
    """A pixel-space DDPM trained from scratch: the original evaluation."""

    def __init__(self, victim: VictimConfig):
        self.victim = victim

    def cache_key(self) -> dict[str, Any] | None:
        return None  # keeps the cache keys (and cached victims) of earlier runs valid

    def train(self, images: Images, victim_dir: Path, desc: str, progress: bool) -> list[float]:
        return train_victim(images, self.victim, victim_dir, desc=desc, progress=progress).loss_history

    def sample(self, victim_dir: Path, num_samples: int, seed: int, progress: bool) -> np.ndarray:
        return sample_victim(victim_dir, num_samples, seed=seed, steps=self.victim.sample_steps,
                             device=self.victim.device, progress=progress, eta=self.victim.sample_eta)

    def extra_scores(self, scorer: Any, images: Images, limit: int,
                     samples: np.ndarray | None = None) -> dict[str, float]:
        return {}
