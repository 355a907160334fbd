"""The one training loop for denoisers, and the latent UNets of the few-shot study and of ``pretrain``.

:func:`run_steps` is the optimisation loop every denoiser training runs through: the surrogate's
fit (``method/fit.py``), the pixel and latent victims (``evaluate/victims/pixel.py``), the Stable
Diffusion LoRA victims (``evaluate/victims/sd_lora_training.py``), the evaluation's stand-in VAE
(``evaluate/victims/autoencoder.py``) and :func:`train_unet`. What differs between them is passed in
(the loss of a step, the optimizer, a learning-rate rule or scheduler, an ``accelerate`` accelerator,
a callback after each step), not restated: each caller keeps its own batches, optimizer and
schedule, so every one of them trains to the same weights, bit for bit, as before the loops were
folded into one.

:func:`train_unet` is the recipe-driven run (:class:`TrainRecipe`: steps, learning rate, batch, warm-up,
cosine, EMA, LoRA) of a ``UNet2DModel`` on the model-space latents of a tiny VAE. Used by the few-shot
study (pretraining and fine-tuning its victims and surrogate, ``evaluate/victims/fewshot.py`` re-exports
everything here) and by ``udp-datasets pretrain`` (:mod:`.pair_pretraining`), so a pair trained by a
user and the study's pairs come from the same code:

- Stable Diffusion's scaled-linear noise schedule (1000 steps), epsilon prediction;
- horizontal flips: the latents of the mirrored images are encoded once beside the originals (a
  mirrored latent is not the latent of the mirrored image);
- AdamW, linear warm-up then constant or cosine decay, gradient clipping 1, optional EMA;
- every random draw (batches, flips, timesteps, noise) from one generator seeded by ``seed``;
- :class:`TrainState`: a run interrupted after a checkpoint resumes from it and ends with the same
  weights, bit for bit, as a run that was never interrupted (model, optimizer, EMA, generator, losses).

:data:`FEWSHOT_UNETS` holds the two architectures of the study: the victim and, shaped and seeded
differently, the protector's surrogate (``fewshot-surrogate``, also the UNet of the shipped pair).
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

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
    """Key of ``evaluate.victims.fewshot.LORA_TARGETS``."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LatentData:
    """Model-space latents of a training set and of its mirror images, (N, C, h, w) each."""

    z: torch.Tensor
    z_flip: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainState:
    """Everything a run needs to continue after ``step`` exactly as if it had not stopped."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    generator: torch.Tensor
    losses: list[float]
    ema: dict[str, torch.Tensor] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "model": self.model, "optimizer": self.optimizer, "generator": self.generator,
                "losses": self.losses, "ema": self.ema}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainState":
        return cls(**data)


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
    from .tiny_autoencoder import bundled_taef2

    vae = bundled_taef2()
    if stats is not None and per_channel:
        vae.register_to_config(latents_mean=[float(v) for v in stats["channel_mean"]],
                               latents_std=[float(v) for v in stats["channel_std"]])
    elif stats is not None:
        vae.register_to_config(shift_factor=float(stats["shift"]), scaling_factor=float(stats["scale"]))
    return vae.requires_grad_(False)


def to_tensor(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float().div(255)


def mirrored_raw_latents(x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw TAEF2 latents of (N, 3, H, W) images in [0, 1] and of their mirror images (a mirrored latent
    is not the latent of the mirrored image, so both are encoded)."""
    vae = normalised_taef2(None)
    return raw_latents(vae, x01), raw_latents(vae, x01.flip(-1))


def normalised_latent_data(stats: dict[str, Any], per_channel: bool, raw: torch.Tensor,
                           raw_flip: torch.Tensor) -> tuple[Any, LatentData]:
    """The TAEF2 of :func:`normalised_taef2` (``stats``, ``per_channel``) and the raw latents and their
    mirrors put in its model space, as its VAE config declares (what a saved pair reads back)."""
    from .latent import latent_normalisation

    vae = normalised_taef2(stats, per_channel)
    norm = latent_normalisation(vae.config)
    return vae, LatentData(norm.normalise(raw), norm.normalise(raw_flip))


def latent_statistics(raw: torch.Tensor) -> dict[str, Any]:
    """Both normalisations of raw latents (N, C, h, w): scalar (mean, 1 / std) and per channel."""
    return {"shift": float(raw.mean()), "scale": float(1 / raw.std()),
            "channel_mean": raw.mean((0, 2, 3)).tolist(), "channel_std": raw.std((0, 2, 3)).tolist()}


@torch.no_grad()
def raw_latents(vae, x01: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """TAEF2 latents before normalisation (diffusers' [-1, 1] pixel convention)."""
    return torch.cat([vae.encode(x01[i:i + batch] * 2 - 1).latents for i in range(0, x01.shape[0], batch)])


def noise_schedule():
    """Stable Diffusion's scaled-linear DDPM schedule (the latent pairs' scheduler)."""
    from .latent import sd_scheduler

    return sd_scheduler()


def lr_factor(step: int, recipe: TrainRecipe) -> float:
    """Learning-rate multiplier at ``step`` (1-based): linear warm-up, then constant or cosine to 0."""
    warm = min(1.0, step / recipe.warmup_steps) if recipe.warmup_steps else 1.0
    if not recipe.cosine:
        return warm
    progress = max(0, step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return warm * 0.5 * (1 + math.cos(math.pi * progress))


def _state(step: int, unet: torch.nn.Module, optimizer: torch.optim.Optimizer, gen: torch.Generator,
           losses: list[float], ema: torch.nn.Module | None) -> TrainState:
    clone = lambda sd: {k: v.detach().clone() for k, v in sd.items()}  # noqa: E731
    return TrainState(step=step, model=clone(unet.state_dict()), optimizer=copy.deepcopy(optimizer.state_dict()),
                      generator=gen.get_state(), losses=list(losses),
                      ema=clone(ema.state_dict()) if ema is not None else None)


def epsilon_loss(unet: torch.nn.Module, scheduler: Any, x0: torch.Tensor, noise: torch.Tensor,
                 t: torch.Tensor) -> torch.Tensor:
    """MSE between ``noise`` and the UNet's prediction of it from ``x0`` noised to ``t`` (epsilon prediction)."""
    return torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)


def run_steps(steps: Iterable[int], loss_at: Callable[[int], torch.Tensor], optimizer: torch.optim.Optimizer,
              params: Sequence[torch.nn.Parameter], *, max_grad_norm: float | None = 1.0,
              lr_at: Callable[[int], float] | None = None, schedule: Any = None, accelerator: Any = None,
              accumulate: torch.nn.Module | None = None,
              after_step: Callable[[int, list[float]], None] | None = None,
              losses: list[float] | None = None) -> list[float]:
    """The one optimisation loop: for each of ``steps``, ``loss_at(step)``, backward, clip, step; the losses.

    - ``lr_at``: the learning rate of ``step``, set on every parameter group before it; ``schedule``:
      a torch LR scheduler, stepped after the optimizer (diffusers' schedules).
    - ``max_grad_norm``: clip the gradient norm of ``params`` (``None``: no clipping).
    - ``accelerator``: its ``backward`` and ``clip_grad_norm_`` are used (mixed precision, gradient
      accumulation), and clipping waits for the steps that synchronise gradients; with ``accumulate``
      (the trained model) each step runs inside ``accelerator.accumulate``.
    - ``after_step(step, losses)``: EMA, checkpoints, progress, after the step's loss is appended.
    - ``losses``: the losses of the steps before (a resumed run), extended in place.

    The gradients are cleared before the first step and after every optimizer step (so an accumulating
    accelerator keeps its micro-batches' gradients until it steps).
    """
    losses = [] if losses is None else losses
    backward = accelerator.backward if accelerator is not None else torch.Tensor.backward
    clip = accelerator.clip_grad_norm_ if accelerator is not None else torch.nn.utils.clip_grad_norm_
    optimizer.zero_grad(set_to_none=True)
    for step in steps:
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
        with accelerator.accumulate(accumulate) if accumulate is not None else nullcontext():
            loss = loss_at(step)
            backward(loss)
            if max_grad_norm is not None and (accelerator is None or accelerator.sync_gradients):
                clip(params, max_grad_norm)
            optimizer.step()
            if schedule is not None:
                schedule.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if after_step is not None:
            after_step(step, losses)
    return losses


def train_unet(unet: torch.nn.Module, data: LatentData, recipe: TrainRecipe, seed: int,
               params: list[torch.nn.Parameter] | None = None, desc: str | None = None,
               checkpoints: Sequence[int] = (), resume: TrainState | None = None, save_every: int = 0,
               on_save: Callable[[TrainState], None] | None = None,
               ) -> tuple[torch.nn.Module, list[float], dict[int, dict]]:
    """Epsilon-prediction training of ``unet`` in place (:func:`run_steps`); every random draw comes from ``seed``.

    Returns (the model to sample: the EMA copy or ``unet``, the loss per step, {step: state dict}
    for ``checkpoints``). ``params`` default to every parameter that requires a gradient.
    ``save_every`` > 0 calls ``on_save`` with a :class:`TrainState` after every ``save_every`` steps;
    ``resume`` (such a state, of the same recipe and seed) continues after its step.
    """
    scheduler = noise_schedule()
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in unet.parameters() if p.requires_grad] if params is None else params
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.0)
    ema = copy.deepcopy(unet).requires_grad_(False) if recipe.ema > 0 else None
    losses, saved, first = [], {}, 1
    if resume is not None:
        unet.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        gen.set_state(resume.generator)
        if ema is not None and resume.ema is not None:
            ema.load_state_dict(resume.ema)
        losses, first = list(resume.losses), resume.step + 1

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(0, data.z.shape[0], (recipe.batch_size,), generator=gen)
        flip = torch.rand(recipe.batch_size, generator=gen) < 0.5
        z0 = torch.where(flip.view(-1, 1, 1, 1), data.z_flip[idx], data.z[idx])
        t = torch.randint(0, scheduler.config.num_train_timesteps, (recipe.batch_size,), generator=gen)
        noise = torch.randn(z0.shape, generator=gen)
        return epsilon_loss(unet, scheduler, z0, noise, t)

    def after_step(step: int, losses: list[float]) -> None:
        if ema is not None:
            decay = min(recipe.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, p in zip(ema.parameters(), unet.parameters()):
                    pe.lerp_(p, 1 - decay)
        if step in checkpoints:
            saved[step] = {k: v.detach().clone() for k, v in unet.state_dict().items()}
        if save_every and on_save is not None and (step % save_every == 0 or step == recipe.steps):
            on_save(_state(step, unet, optimizer, gen, losses, ema))

    unet.train()
    bar = tqdm(range(first, recipe.steps + 1), desc=desc, disable=desc is None, mininterval=5,
               initial=first - 1, total=recipe.steps)
    losses = run_steps(bar, loss_at, optimizer, params, after_step=after_step, losses=losses,
                       lr_at=lambda step: recipe.learning_rate * lr_factor(step, recipe))
    unet.eval()
    return (ema if ema is not None else unet).eval(), losses, saved
