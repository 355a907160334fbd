"""Fitting the surrogate on the data being protected.

``unlearnable`` (min-min, after Huang et al. 2021): alternate a few optimizer
steps of the surrogate on x + delta with PGD *descent* on delta, so the
perturbation becomes a shortcut the denoiser learns instead of the data.
``adversarial``: train the surrogate on the clean images, to be attacked frozen.
A latent surrogate trains its UNet on the (scaled) VAE latents, fully or through
LoRA adapters (``fit_lora_rank``); the VAE and text encoder stay frozen, as in
Stable Diffusion fine-tuning.

Fit works at the surrogate's own resolution on a bounded subset (see
``fit_max_samples``); the perturbations it learns are only a training device. The
published images are made afterwards by :class:`~udp_datasets.Protector` against
the frozen fitted surrogate, one code path for every sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .config import ProtectionConfig
from .objectives import ProtectionObjective
from .pgd import pgd, sample_generator
from .surrogate import Surrogate

logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Loss history of a fit, per round: surrogate training loss and loss on x + delta."""

    history: list[dict[str, float]] = field(default_factory=list)
    num_samples: int = 0

    def to_dict(self) -> dict:
        return {"num_samples": self.num_samples, "history": self.history}


def images_to_tensor(images: Sequence[np.ndarray], resolution: tuple[int, int], channels: int) -> torch.Tensor:
    """Resize (H, W, C) uint8 arrays of any size to one (N, C, h, w) float batch in [0, 1]."""
    out = []
    for arr in images:
        x = torch.from_numpy(np.array(arr, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255).unsqueeze(0)
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != tuple(resolution):
            x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False, antialias=True)
        out.append(x.clamp(0, 1))
    return torch.cat(out)


def _train_steps(surrogate: Surrogate, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                 data: torch.Tensor, steps: int, batch_size: int, gen: torch.Generator,
                 prompts: Sequence[str] | None = None) -> float:
    """Plain DDPM training steps (uniform t, epsilon loss), as a victim would train."""
    unet = surrogate.unet
    unet.train()
    for p in params:
        p.requires_grad_(True)
    device = surrogate.device
    losses = []
    num_t = surrogate.alphas_cumprod.numel()
    for _ in range(steps):
        idx = torch.randperm(data.shape[0], generator=gen)[:batch_size]
        with torch.no_grad():  # the VAE (latent surrogates) is frozen
            x0 = surrogate.to_model_space(data[idx].to(device))
        noise = torch.randn(x0.shape, generator=gen).to(device=device, dtype=x0.dtype)
        t = torch.randint(0, num_t, (x0.shape[0],), generator=gen).to(device)
        cond = None if prompts is None else surrogate.encode_text([prompts[i] for i in idx.tolist()])
        loss = surrogate.denoising_loss(x0, noise, t, cond).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
    surrogate.freeze()
    return float(np.mean(losses)) if losses else float("nan")


def trainable_parameters(surrogate: Surrogate, config: ProtectionConfig) -> list[torch.nn.Parameter]:
    """The whole UNet, or LoRA adapters on it (latent surrogates, ``fit_lora_rank`` > 0)."""
    if config.fit_lora_rank > 0:
        if surrogate.kind != "latent":
            raise ValueError("fit_lora_rank > 0 is for latent (Stable Diffusion) surrogates; the built-in "
                             "pixel surrogates are small enough to train fully (use fit_lora_rank=0)")
        return surrogate.add_lora(config.fit_lora_rank)  # type: ignore[attr-defined]
    surrogate.unet.requires_grad_(True)
    return list(surrogate.unet.parameters())


def fit_surrogate(surrogate: Surrogate, images: Sequence[np.ndarray], keys: Sequence[str],
                  config: ProtectionConfig, progress: bool = True,
                  captions: Sequence[str | None] | None = None) -> FitResult:
    """Train ``surrogate`` in place for ``config.objective``; returns the loss history.

    ``captions`` fill the prompt template of a text-conditioned (Stable Diffusion) surrogate.
    """
    if len(images) == 0:
        raise ValueError("fit needs at least one image")
    if config.objective == "encoder":
        raise ValueError("objective='encoder' attacks the VAE only: there is no denoiser to fit; protect "
                         "directly with a latent surrogate (--surrogate PATH)")
    device = surrogate.device
    data = images_to_tensor(images, surrogate.image_size, surrogate.image_channels)
    gen = torch.Generator().manual_seed(config.seed)
    params = trainable_parameters(surrogate, config)
    optimizer = torch.optim.AdamW(params, lr=config.fit_lr, weight_decay=0.0)
    objective = ProtectionObjective(surrogate, config.replace(objective="unlearnable"))
    prompts = objective.prompts(len(images), captions)
    delta = torch.zeros_like(data)
    eps = config.budget_levels / 255.0
    result = FitResult(num_samples=len(images))
    bar = tqdm(range(config.fit_rounds), desc=f"fit ({config.objective})", disable=not progress)
    for rnd in bar:
        if config.objective == "adversarial":
            train_loss = _train_steps(surrogate, optimizer, params, data, config.fit_surrogate_steps,
                                      config.fit_batch_size, gen, prompts)
            record = {"round": rnd, "train_loss": train_loss}
        else:
            train_loss = _train_steps(surrogate, optimizer, params, (data + delta).clamp(0, 1),
                                      config.fit_surrogate_steps, config.fit_batch_size, gen, prompts)
            delta_losses = []
            for start in range(0, data.shape[0], config.batch_size):
                chunk = slice(start, start + config.batch_size)
                gens = [sample_generator(config.seed, f"fit:{rnd}:{k}") for k in keys[chunk]]
                x = data[chunk].to(device)
                chunk_captions = None if captions is None else list(captions[chunk])
                d = pgd(x, objective.loss_fn(gens, x, chunk_captions), epsilon=eps, alpha=config.step_size,
                        steps=config.fit_pgd_steps, maximize=False, init=delta[chunk])
                delta[chunk] = d.cpu()
                delta_losses.append(objective.evaluate((x + d).clamp(0, 1), gens, repeats=1, clean=x,
                                                       captions=chunk_captions))
            perturbed_loss = float(torch.cat(delta_losses).mean())
            record = {"round": rnd, "train_loss": train_loss, "perturbed_loss": perturbed_loss}
        result.history.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "round"})
        logger.info("fit round %d: %s", rnd, record)
        if config.fit_stop_loss > 0 and record.get("perturbed_loss", record["train_loss"]) < config.fit_stop_loss:
            logger.info("fit stopped early: loss below fit_stop_loss=%g", config.fit_stop_loss)
            break
    surrogate.freeze()
    return result
