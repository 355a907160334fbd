"""Pixel-space surrogates: a diffusers ``UNet2DModel`` + scheduler on images in [-1, 1].

Either loaded from a ``DDPMPipeline`` / bare UNet folder (safetensors only), or built from a small
built-in architecture that :meth:`udp_datasets.Protector.fit` trains on the data being protected.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from .base import Surrogate, SurrogateError, SurrogateRef, component_dir, require_safetensors, weights_sha256

logger = logging.getLogger(__name__)

# Built-in architectures: sized for CPU demos and tests (tiny) or a single GPU (small).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    ),
    "small": dict(
        block_out_channels=(64, 128, 128, 256),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        norm_num_groups=32,
    ),
}

def build_unet(architecture: str, resolution: int, in_channels: int = 3, seed: int = 0):
    """A randomly initialised ``UNet2DModel`` of a built-in architecture (seeded)."""
    from diffusers import UNet2DModel

    if architecture not in ARCHITECTURES:
        raise SurrogateError(
            f"unknown surrogate architecture {architecture!r}; built-in: {sorted(ARCHITECTURES)}")
    spec = ARCHITECTURES[architecture]
    factor = 2 ** (len(spec["block_out_channels"]) - 1)
    if resolution % factor:
        raise SurrogateError(
            f"resolution {resolution} must be divisible by {factor} for architecture {architecture!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=resolution, in_channels=in_channels,
                           out_channels=in_channels, **spec)


def build_surrogate(architecture: str = "tiny", resolution: int = 32, seed: int = 0,
                    num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                    in_channels: int = 3) -> Surrogate:
    from diffusers import DDPMScheduler

    unet = build_unet(architecture, resolution, in_channels=in_channels, seed=seed)
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule)
    return Surrogate(unet, scheduler, SurrogateRef(kind="pixel", source=None, architecture=architecture))

def load_pixel_surrogate(folder: Path, source: str, revision: str | None) -> Surrogate:
    from diffusers import DDPMScheduler, UNet2DModel

    unet_dir = component_dir(folder, "unet")
    if not (unet_dir / "config.json").exists():
        raise SurrogateError(
            f"no UNet config found in {folder} (looked for unet/config.json and config.json); "
            "a surrogate folder is what diffusers' save_pretrained writes for a UNet2DModel or a "
            "DDPMPipeline")
    require_safetensors(unet_dir, "UNet2DModel")
    sched_dir = component_dir(folder, "scheduler")
    if not (sched_dir / "scheduler_config.json").exists():
        raise SurrogateError(f"no scheduler_config.json in {folder} or {folder}/scheduler")
    try:
        unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(sched_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise SurrogateError(f"could not load surrogate from {folder}: {exc}") from exc
    arch = json.loads((unet_dir / "config.json").read_text()).get("_class_name")
    ref = SurrogateRef(kind="pixel", source=source, revision=revision,
                       sha256=weights_sha256(folder), architecture=arch)
    logger.info("loaded surrogate %s (sha256 %s)", source, ref.sha256[:12])
    surrogate = Surrogate(unet, scheduler, ref)
    surrogate.load_extras(folder)
    return surrogate
