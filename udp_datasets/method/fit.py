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

from ..config import ProtectionConfig
from .budget import Budget
from .objectives import ProtectionObjective
from .pgd import pgd, sample_generator
from ..models.base import Surrogate
from ..models.denoiser_training import run_steps

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


class LatentCache:
    """The frozen VAE's latents of a fixed set of images, each encoded once, when a batch first needs it.

    Within one round of surrogate training the images (x + delta) do not change, yet every step used
    to encode its batch again: ``fit_surrogate_steps`` x ``fit_batch_size`` encoder passes per round
    instead of at most one per image. The latents are the same up to float rounding (oneDNN may pick
    another kernel for another batch size: ~1e-7 here). Pixel surrogates have nothing to cache.
    """

    def __init__(self, surrogate: Surrogate, data: torch.Tensor):
        self.surrogate, self.data = surrogate, data
        self.latents: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        missing = [i for i in idx.tolist() if i not in self.latents]
        if missing:
            z = self.surrogate.to_model_space(self.data[missing].to(self.surrogate.device))
            self.latents.update(zip(missing, z))
        return torch.stack([self.latents[i] for i in idx.tolist()])


def _batch_loss(surrogate: Surrogate, data: torch.Tensor, batch_size: int, gen: torch.Generator,
                prompts: Sequence[str] | None, cache: LatentCache | None = None) -> torch.Tensor:
    """Mean denoising loss on a random batch, uniform t, as a victim trains (fit and matching)."""
    device = surrogate.device
    idx = torch.randperm(data.shape[0], generator=gen)[:batch_size]
    if cache is not None:
        x0 = cache(idx)
    else:
        with torch.no_grad():  # the VAE (latent surrogates) is frozen
            x0 = surrogate.to_model_space(data[idx].to(device))
    noise = torch.randn(x0.shape, generator=gen).to(device=device, dtype=x0.dtype)
    t = torch.randint(0, surrogate.alphas_cumprod.numel(), (x0.shape[0],), generator=gen).to(device)
    cond = None if prompts is None else surrogate.encode_text([prompts[i] for i in idx.tolist()])
    return surrogate.denoising_loss(x0, noise, t, cond).mean()


def _train_steps(surrogate: Surrogate, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                 data: torch.Tensor, steps: int, batch_size: int, gen: torch.Generator,
                 prompts: Sequence[str] | None = None) -> float:
    """Plain DDPM training steps (uniform t, epsilon loss), as a victim would train (the one loop,
    :func:`~udp_datasets.models.denoiser_training.run_steps`); the mean loss."""
    unet = surrogate.unet
    unet.train()
    for p in params:
        p.requires_grad_(True)
    cache = LatentCache(surrogate, data) if surrogate.kind == "latent" else None  # encode each image once a round
    losses = run_steps(range(steps), lambda _: _batch_loss(surrogate, data, batch_size, gen, prompts, cache),
                       optimizer, params)
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


def clean_direction(surrogate: Surrogate, data: torch.Tensor, gen: torch.Generator, batches: int,
                    batch_size: int, prompts: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
    """Unit-norm gradient of the surrogate's clean denoising loss (uniform t, as a victim trains).

    ``objective='matching'`` steers delta against this direction (see objectives.py).
    """
    unet = surrogate.unet
    params = dict(unet.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    for _ in range(batches):
        (_batch_loss(surrogate, data, batch_size, gen, prompts) / batches).backward()
    grads = {k: p.grad.detach().float().cpu() for k, p in params.items() if p.grad is not None}
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    if not torch.isfinite(norm) or norm == 0:
        raise RuntimeError("the clean-loss gradient is zero or not finite; cannot build a matching direction")
    for p in params.values():
        p.grad = None
    surrogate.freeze()
    return {k: g / norm for k, g in grads.items()}


def _stage_rounds(rounds: int, pool: int) -> list[int]:
    """Rounds after which the earlier pool stages are snapshotted (evenly spaced, last excluded)."""
    return sorted({max(0, round((k + 1) * rounds / pool) - 1) for k in range(pool - 1)})


def fit_surrogate(surrogate: Surrogate, images: Sequence[np.ndarray], keys: Sequence[str],
                  config: ProtectionConfig, progress: bool = True,
                  captions: Sequence[str | None] | None = None) -> FitResult:
    """Train ``surrogate`` in place for ``config.objective``; returns the loss history.

    ``captions`` fill the prompt template of a text-conditioned (Stable Diffusion) surrogate.
    Pool stages, matching directions and cluster perturbations go to ``surrogate.extras``.
    """
    if len(images) == 0:
        raise ValueError("fit needs at least one image")
    if config.objective == "encoder":
        raise ValueError("objective='encoder' attacks the VAE only: there is no denoiser to fit; protect "
                         "directly with a latent surrogate (--surrogate PATH)")
    data = images_to_tensor(images, surrogate.image_size, surrogate.image_channels)
    gen = torch.Generator().manual_seed(config.seed)
    params = trainable_parameters(surrogate, config)
    optimizer = torch.optim.AdamW(params, lr=config.fit_lr, weight_decay=0.0)
    surrogate.extras = {}  # a refit starts from the weights only
    objective = ProtectionObjective(surrogate, config.replace(objective="unlearnable", fit_pool=1, clusters=0))
    prompts = objective.prompts(len(images), captions)
    train_clean = config.objective in ("adversarial", "matching", "ace")
    shared = _Clusters(data, config) if config.clusters else None
    delta = torch.zeros_like(data)
    stage_rounds = _stage_rounds(config.fit_rounds, config.fit_pool)
    result = FitResult(num_samples=len(images))
    bar = tqdm(range(config.fit_rounds), desc=f"fit ({config.objective})", disable=not progress)
    for rnd in bar:
        if train_clean:
            train_loss = _train_steps(surrogate, optimizer, params, data, config.fit_surrogate_steps,
                                      config.fit_batch_size, gen, prompts)
            record = {"round": rnd, "train_loss": train_loss}
        elif config.objective == "aspl":
            record = _aspl_round(surrogate, optimizer, params, data, delta, keys, captions, config, rnd, gen,
                                 prompts)
        else:
            if shared is not None:
                delta = shared.expand()
            if config.fit_pgd_scope == "next_round":
                drawn_now = next_round_draws(gen, data.shape[0], config, surrogate)  # this round's batches
            train_loss = _train_steps(surrogate, optimizer, params, (data + delta).clamp(0, 1),
                                      config.fit_surrogate_steps, config.fit_batch_size, gen, prompts)
            if shared is not None:
                perturbed_loss = shared.descend(objective, config, rnd, keys)
            elif config.fit_pgd_scope == "next_round":  # only what the next round trains on (none after the last)
                last = rnd + 1 == config.fit_rounds
                subset = drawn_now if last else next_round_draws(gen, data.shape[0], config, surrogate)
                perturbed_loss = _pgd_round(objective, config.replace(fit_pgd_steps=0) if last else config, rnd,
                                            data, delta, keys, captions, maximize=False, subset=subset)
            else:
                perturbed_loss = _pgd_round(objective, config, rnd, data, delta, keys, captions, maximize=False)
            record = {"round": rnd, "train_loss": train_loss, "perturbed_loss": perturbed_loss}
        result.history.append(record)
        bar.set_postfix({k: f"{v:.4f}" for k, v in record.items() if k != "round"})
        logger.info("fit round %d: %s", rnd, record)
        if rnd in stage_rounds:
            _snapshot(surrogate, stage_rounds.index(rnd), data, gen, config, prompts)
        if config.fit_stop_loss > 0 and record.get("perturbed_loss", record["train_loss"]) < config.fit_stop_loss:
            logger.info("fit stopped early: loss below fit_stop_loss=%g", config.fit_stop_loss)
            break
    if config.objective == "aspl":  # what the transform attacks: theta fine-tuned on the clean images
        _train_steps(surrogate, torch.optim.AdamW(params, lr=config.fit_lr, weight_decay=0.0), params, data,
                     config.fit_surrogate_steps, config.fit_batch_size, gen, prompts)
    if config.objective == "matching":
        surrogate.extras.update({f"direction-1.{k}": v for k, v in clean_direction(
            surrogate, data, gen, 8, config.fit_batch_size, prompts).items()})
    if shared is not None:
        surrogate.extras.update(shared.extras())
    surrogate.freeze()
    return result


def next_round_draws(gen: torch.Generator, n: int, config: ProtectionConfig, surrogate: Surrogate) -> list[int]:
    """The fit images the next round's training batches will draw, found by replaying ``gen``'s draws
    (batch indices, noise, timesteps, as :func:`_batch_loss` makes them) on a copy of it."""
    replay = torch.Generator().manual_seed(0)
    replay.set_state(gen.get_state())
    b = min(config.fit_batch_size, n)
    drawn: set[int] = set()
    for _ in range(config.fit_surrogate_steps):
        drawn.update(torch.randperm(n, generator=replay)[:config.fit_batch_size].tolist())
        torch.randn((b, *surrogate.model_shape), generator=replay)
        torch.randint(0, surrogate.alphas_cumprod.numel(), (b,), generator=replay)
    return sorted(drawn)


def _pgd_round(objective: ProtectionObjective, config: ProtectionConfig, rnd: int, data: torch.Tensor,
               delta: torch.Tensor, keys: Sequence[str], captions: Sequence[str | None] | None,
               maximize: bool, subset: Sequence[int] | None = None) -> float:
    """One round of PGD on every fit image's own delta (or on ``subset``'s), updated in place: descent for
    min-min, ascent for ASPL. Returns the mean loss on x + delta of the images it updated."""
    device = objective.surrogate.device
    eps = Budget.of(config).epsilon
    order = list(range(data.shape[0])) if subset is None else list(subset)
    losses = []
    for start in range(0, len(order), config.batch_size):
        chunk = order[start:start + config.batch_size]
        gens = [sample_generator(config.seed, f"fit:{rnd}:{keys[i]}") for i in chunk]
        x = data[chunk].to(device)
        chunk_captions = None if captions is None else [captions[i] for i in chunk]
        d = pgd(x, objective.loss_fn(gens, x, chunk_captions), epsilon=eps, alpha=config.step_size,
                steps=config.fit_pgd_steps, maximize=maximize, init=delta[chunk])
        delta[chunk] = d.cpu()
        losses.append(objective.evaluate((x + d).clamp(0, 1), gens, repeats=1, clean=x, captions=chunk_captions))
    return float(torch.cat(losses).mean()) if losses else float("nan")


def _aspl_round(surrogate: Surrogate, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter],
                data: torch.Tensor, delta: torch.Tensor, keys: Sequence[str],
                captions: Sequence[str | None] | None, config: ProtectionConfig, rnd: int, gen: torch.Generator,
                prompts: Sequence[str] | None) -> dict[str, float]:
    """One round of Anti-DreamBooth's ASPL (Van Le et al., ICCV 2023).

    theta' (a copy of theta) is fine-tuned on the CLEAN images, the fit images' deltas ascend
    theta''s loss for ``fit_pgd_steps``, then theta itself trains on the protected images, as a
    victim would. The copy is made by saving and restoring theta's weights in place, so pool and
    LoRA setups need no second model.
    """
    theta = {k: v.detach().clone() for k, v in surrogate.unet.state_dict().items()}
    clean_loss = _train_steps(surrogate, torch.optim.AdamW(params, lr=config.fit_lr, weight_decay=0.0), params,
                              data, config.fit_surrogate_steps, config.fit_batch_size, gen, prompts)
    attack = ProtectionObjective(surrogate, config.replace(objective="adversarial", fit_pool=1, clusters=0))
    perturbed_loss = _pgd_round(attack, config, rnd, data, delta, keys, captions, maximize=True)
    surrogate.unet.load_state_dict(theta)
    train_loss = _train_steps(surrogate, optimizer, params, (data + delta).clamp(0, 1), config.fit_surrogate_steps,
                              config.fit_batch_size, gen, prompts)
    return {"round": rnd, "clean_finetune_loss": clean_loss, "perturbed_loss": perturbed_loss,
            "train_loss": train_loss}


def _snapshot(surrogate: Surrogate, stage: int, data: torch.Tensor, gen: torch.Generator,
              config: ProtectionConfig, prompts: Sequence[str] | None) -> None:
    """Keep this training stage for the pool (and its clean direction, for matching)."""
    surrogate.extras.update({f"stage{stage}.{k}": p.detach().cpu().clone()
                             for k, p in surrogate.unet.named_parameters()})
    if config.objective == "matching":
        surrogate.extras.update({f"direction{stage}.{k}": v for k, v in clean_direction(
            surrogate, data, gen, 8, config.fit_batch_size, prompts).items()})


class _Clusters:
    """Shared deltas, one per k-means cluster of the fit images, descended jointly."""

    def __init__(self, data: torch.Tensor, config: ProtectionConfig):
        from .clusters import cluster_features, kmeans

        self.data = data
        self.centroids, self.assign = kmeans(cluster_features(data), config.clusters, config.seed)
        self.deltas = torch.zeros((config.clusters, *data.shape[1:]))
        sizes = torch.bincount(self.assign, minlength=config.clusters).tolist()
        logger.info("fit: %d clusters of sizes %s", config.clusters, sizes)

    def expand(self) -> torch.Tensor:
        return self.deltas[self.assign]

    def descend(self, objective: ProtectionObjective, config: ProtectionConfig, rnd: int, keys: Sequence[str]) -> float:
        """``fit_pgd_steps`` sign steps on each shared delta, its gradient summed over members."""
        device, eps = objective.surrogate.device, Budget.of(config).epsilon
        shared = self.deltas.to(device)
        gens = [sample_generator(config.seed, f"fit:{rnd}:{k}") for k in keys]
        for step in range(config.fit_pgd_steps):
            grad = torch.zeros_like(shared)
            for start in range(0, self.data.shape[0], config.batch_size):
                chunk = slice(start, start + config.batch_size)
                x = self.data[chunk].to(device)
                d = shared.detach().requires_grad_(True)
                loss = objective.loss_fn(gens[chunk], x)(((x + d[self.assign[chunk]]).clamp(0, 1)), step)
                grad += torch.autograd.grad(loss.sum(), d)[0]
            shared = (shared - config.step_size * grad.sign()).clamp(-eps, eps)
        self.deltas = shared.detach().cpu()
        with torch.no_grad():
            x = (self.data + self.expand()).clamp(0, 1)
            losses = [objective.evaluate(x[s:s + config.batch_size].to(device),
                                         gens[s:s + config.batch_size], repeats=1)
                      for s in range(0, x.shape[0], config.batch_size)]
        return float(torch.cat(losses).mean())

    def extras(self) -> dict[str, torch.Tensor]:
        return {"clusters.centroids": self.centroids, "clusters.deltas": self.deltas}
