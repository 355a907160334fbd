"""LoRA DreamBooth training of a Stable Diffusion victim, after diffusers' ``train_dreambooth_lora.py``.

Frozen VAE and CLIP text encoder, LoRA on the UNet attention projections (:func:`.sd_lora.add_lora`),
AdamW, epsilon / v-prediction loss, accelerate with optional mixed precision and gradient
checkpointing, through the one training loop (:func:`~udp_datasets.models.denoiser_training.run_steps`).
All randomness comes from one seeded generator, so a clean-trained and a protected-trained victim
draw the same timesteps and noise at every step.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...models.denoiser_training import run_steps
from ...models.devices import resolve_device
from .sd_lora import (DreamBoothError, DreamBoothSettings, LoraVictimResult, add_lora, load_components, peak_memory,
                      reset_peak_memory, resize_shorter_side, resolve_precision, save_lora)

logger = logging.getLogger(__name__)


def train_lora_victim(model: str, images: Sequence[np.ndarray], prompt: str, output_dir: str | Path,
                      settings: DreamBoothSettings, desc: str = "victim", progress: bool = True,
                      components: dict[str, Any] | None = None) -> LoraVictimResult:
    """Fine-tune LoRA adapters of ``model``'s UNet on ``images`` with one instance prompt; save them.

    All randomness (batch order, crops, flips, VAE posterior samples, noise, timesteps, LoRA
    initialisation) comes from ``settings.seed``, so two calls on different images draw the same
    timesteps and noise at every step and their losses compare step by step.
    ``components`` (from :func:`.sd_lora.load_components`) is modified in place; pass it only to
    reuse already-loaded weights once.
    """
    from accelerate.state import AcceleratorState, PartialState

    device = resolve_device(settings.device)
    mixed_precision, _ = resolve_precision(settings, device)
    if len(images) == 0:
        raise DreamBoothError("no training images")
    accelerator = make_accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision,
                                   gradient_accumulation_steps=settings.gradient_accumulation_steps)
    try:
        if accelerator.num_processes > 1:  # every rank would write the same files; the victim is one GPU's job
            raise DreamBoothError("the LoRA victim runs in a single process; start it without a multi-process "
                                  "`accelerate launch` / torchrun")
        return _train_lora(accelerator, model, images, prompt, output_dir, settings, desc, progress, components)
    finally:
        if PartialState().num_processes == 1:  # do not leave this run's precision to later Accelerators
            AcceleratorState._reset_state(reset_partial_state=True)


def make_accelerator(**kwargs: Any) -> Any:
    """An ``Accelerator``; in a single process, one with other settings may already exist.

    accelerate keeps one process-wide state and refuses a second ``Accelerator`` with another
    device or precision (e.g. after a pixel-victim evaluation in the same Python process). In a
    single process that state holds nothing else, so it is reset; under a multi-process launch
    the refusal stands (the launcher's settings win).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        if "already been initialized" not in str(exc) or PartialState().num_processes > 1:
            raise
        logger.debug("resetting the single-process accelerate state: %s", exc)
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


@dataclass
class _LoraRun:
    """The prepared models and optimiser of one LoRA fine-tuning run."""

    unet: Any
    vae: Any
    noise_scheduler: Any
    optimizer: Any
    lr_schedule: Any
    lora_params: list[torch.nn.Parameter]
    prompt_embeds: torch.Tensor
    trainable: int
    weight_dtype: torch.dtype


def _train_lora(accelerator: Any, model: str, images: Sequence[np.ndarray], prompt: str, output_dir: str | Path,
                settings: DreamBoothSettings, desc: str, progress: bool,
                components: dict[str, Any] | None) -> LoraVictimResult:
    start = time.perf_counter()
    device = resolve_device(settings.device)
    mixed_precision, weight_dtype = resolve_precision(settings, device)
    reset_peak_memory(device)
    run = _prepare(accelerator, components or load_components(model, settings, weight_dtype), prompt, settings,
                   weight_dtype)
    losses = _fit(accelerator, run, images, settings, desc, progress)
    memory = peak_memory(device)
    output_dir = Path(output_dir)
    save_lora(accelerator.unwrap_model(run.unet), output_dir)
    seconds = time.perf_counter() - start
    result = LoraVictimResult(lora_dir=str(output_dir), loss_history=losses, seconds=seconds,
                              trainable_parameters=run.trainable, memory=memory)
    (output_dir / "victim_training.json").write_text(json.dumps({
        "model": str(model), "prompt": prompt, "settings": settings.to_dict(), "num_images": len(images),
        "mixed_precision": mixed_precision, "trainable_parameters": run.trainable, "loss_history": losses,
        "seconds": round(seconds, 1), "memory": memory}, indent=1))
    logger.info("LoRA victim %s: %d steps on %d images in %.0f s, final loss %.4f, peak %.0f MiB (%s)", desc,
                settings.train_steps, len(images), seconds, result.final_loss(), memory["peak_mib"], memory["device"])
    del run
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _prepare(accelerator: Any, parts: dict[str, Any], prompt: str, settings: DreamBoothSettings,
             weight_dtype: torch.dtype) -> _LoraRun:
    """Freeze the VAE and text encoder, add LoRA, move to the device, build the optimiser, embed the prompt."""
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    tokenizer, text_encoder, vae, unet = parts["tokenizer"], parts["text_encoder"], parts["vae"], parts["unet"]
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if settings.vae_slicing:
        vae.enable_slicing()
    if settings.vae_tiling:
        vae.enable_tiling()
    trainable = add_lora(unet, settings)
    # frozen weights in half precision on CUDA; the trainable LoRA weights stay fp32 (the script's recipe)
    dev = accelerator.device
    unet.to(dev)
    vae.to(dev)
    text_encoder.to(dev)
    if weight_dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_params, lr=settings.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-8)
    lr_schedule = get_scheduler("constant_with_warmup" if settings.lr_warmup_steps else "constant", optimizer,
                                num_warmup_steps=settings.lr_warmup_steps * accelerator.num_processes)
    unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)
    with torch.no_grad():  # one prompt: its embedding is computed once (the script's pre-computed embeddings)
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(dev)
        prompt_embeds = text_encoder(ids)[0]
    return _LoraRun(unet=unet, vae=vae, noise_scheduler=parts["noise_scheduler"], optimizer=optimizer,
                    lr_schedule=lr_schedule, lora_params=lora_params, prompt_embeds=prompt_embeds,
                    trainable=trainable, weight_dtype=weight_dtype)


def _fit(accelerator: Any, run: _LoraRun, images: Sequence[np.ndarray], settings: DreamBoothSettings, desc: str,
         progress: bool) -> list[float]:
    """The training loop: shuffled epochs of crops, one optimiser step per accumulated batch; the loss history."""
    resized = [to_unit_range(resize_shorter_side(a, settings.resolution)) for a in images]
    gen = torch.Generator().manual_seed(settings.seed)
    order: list[int] = []
    losses: list[float] = []  # one per optimiser step: the mean of its micro-batches' losses
    synced = [0]  # micro-batches up to the last optimiser step

    def loss_at(_: int) -> torch.Tensor:
        nonlocal order
        while len(order) < settings.batch_size:  # shuffled epochs, as a DataLoader(shuffle=True) would
            order += torch.randperm(len(resized), generator=gen).tolist()
        batch_idx, order = order[:settings.batch_size], order[settings.batch_size:]
        pixels = torch.stack([crop(resized[i], settings, gen) for i in batch_idx])
        return _denoising_loss(run, pixels.to(accelerator.device, dtype=run.weight_dtype), gen)

    def after_step(_: int, micro_losses: list[float]) -> None:
        if accelerator.sync_gradients:
            losses.append(float(np.mean(micro_losses[synced[0]:])))
            synced[0] = len(micro_losses)
            bar.update(1)
            if len(losses) % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")

    run.unet.train()
    bar = tqdm(total=settings.train_steps, desc=f"LoRA {desc}", disable=not progress, mininterval=2)
    run_steps(range(settings.train_steps * settings.gradient_accumulation_steps), loss_at, run.optimizer,
              run.lora_params, max_grad_norm=settings.max_grad_norm, schedule=run.lr_schedule,
              accelerator=accelerator, accumulate=run.unet, after_step=after_step)
    bar.close()
    return losses


def _denoising_loss(run: _LoraRun, pixels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """MSE of the UNet's prediction on noised VAE latents of ``pixels`` (draws from ``gen`` in a fixed order)."""
    import torch.nn.functional as F

    dev = pixels.device
    scheduler = run.noise_scheduler
    with torch.no_grad():
        posterior = run.vae.encode(pixels).latent_dist
        latents = posterior.sample(generator=gen) * run.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=gen).to(dev, dtype=latents.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    t = t.to(dev)
    noisy = scheduler.add_noise(latents, noise, t)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        raise DreamBoothError(f"unsupported prediction type {prediction_type!r}")
    embeds = run.prompt_embeds.expand(latents.shape[0], -1, -1)
    pred = run.unet(noisy, t, embeds, return_dict=False)[0]
    return F.mse_loss(pred.float(), target.float(), reduction="mean")


def to_unit_range(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1)


def crop(image: torch.Tensor, settings: DreamBoothSettings, gen: torch.Generator) -> torch.Tensor:
    """A ``settings.resolution`` square of ``image``: centred or random (from ``gen``), flipped if asked."""
    size = settings.resolution
    h, w = image.shape[-2:]
    if settings.center_crop:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
    out = image[:, top:top + size, left:left + size]
    if settings.random_flip and bool(torch.rand(1, generator=gen) < 0.5):
        out = out.flip(-1)
    return out
