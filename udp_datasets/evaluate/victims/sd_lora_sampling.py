"""Samples of a LoRA Stable Diffusion victim: fixed prompts, CPU-seeded generators, DDIM."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...models.devices import resolve_device
from .sd_lora import LORA_WEIGHT_NAME, DreamBoothError, DreamBoothSettings, dtype_kwarg, resolve_precision


def sample_prompts(prompt: str, settings: DreamBoothSettings) -> list[str]:
    """The prompt of each sample: ``sample_prompts`` (or the instance prompt) cycled."""
    prompts = list(settings.sample_prompts) or [prompt]
    return [prompts[i % len(prompts)] for i in range(settings.num_samples)]


@torch.no_grad()
def sample_lora_victim(model: str, lora_dir: str | Path, prompts: Sequence[str], settings: DreamBoothSettings,
                       progress: bool = True) -> np.ndarray:
    """Images from ``StableDiffusionPipeline`` with the LoRA loaded, (N, H, W, 3) uint8.

    Sample i uses a CPU generator seeded ``seed + i`` (independent of device and batch size) and
    a DDIM scheduler built from the model's own scheduler config.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    device = resolve_device(settings.device)
    _, weight_dtype = resolve_precision(settings, device)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model, revision=settings.revision, variant=settings.variant, use_safetensors=True,
            safety_checker=None, **dtype_kwarg(weight_dtype), feature_extractor=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        raise DreamBoothError(f"cannot load StableDiffusionPipeline from {model!r}: {exc}") from exc
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME)
    if settings.vae_slicing:
        pipe.vae.enable_slicing()
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    out = []
    size = settings.resolution
    for start in tqdm(range(0, len(prompts), settings.sample_batch_size), desc="sample", disable=not progress):
        batch = list(prompts[start:start + settings.sample_batch_size])
        gens = [torch.Generator().manual_seed(settings.seed + start + i) for i in range(len(batch))]
        images = pipe(prompt=batch, num_inference_steps=settings.sample_steps, guidance_scale=settings.guidance_scale,
                      generator=gens, height=size, width=size, output_type="np").images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return np.concatenate(out)
