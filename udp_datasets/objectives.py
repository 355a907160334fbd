"""Losses that PGD optimises: the surrogate's denoising loss, minimised or maximised.

``unlearnable`` (min-min) makes the perturbation a shortcut that lowers the
denoising loss; ``adversarial`` (max) raises it against a frozen surrogate. Both
draw their randomness (t, noise) from per-sample generators so that a sample's
protection does not depend on which batch it landed in.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .config import ProtectionConfig
from .pgd import LossFn
from .surrogate import Surrogate
from .timesteps import TimestepSampler


class DenoisingObjective:
    """E_{t ~ p(t), eps} || eps - eps_theta(x_t, t) ||^2 on the surrogate, per sample."""

    def __init__(self, surrogate: Surrogate, config: ProtectionConfig):
        self.surrogate = surrogate
        self.sampler = TimestepSampler(surrogate.alphas_cumprod, config)
        self.maximize = config.objective == "adversarial"
        self.draws = config.noise_draws

    def draw(self, generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step's randomness: timesteps (B*K,), loss weights (B*K,), noise (B*K, C, h, w)."""
        ts, ws, noises = [], [], []
        for g in generators:
            t, w = self.sampler.sample(g, self.draws)
            ts.append(t)
            ws.append(w)
            noises.append(torch.randn((self.draws, *self.surrogate.model_shape), generator=g))
        return torch.cat(ts), torch.cat(ws), torch.cat(noises)

    def loss(self, x01: torch.Tensor, t: torch.Tensor, weights: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        """Per-sample weighted denoising loss of images ``x01`` in [0, 1]."""
        device = x01.device
        x0 = self.surrogate.to_model_space(x01)
        if self.draws > 1:
            x0 = x0.repeat_interleave(self.draws, dim=0)
        per = self.surrogate.denoising_loss(x0, noise.to(device=device, dtype=x0.dtype),
                                            t.to(device))
        per = per * weights.to(device)
        return per.view(x01.shape[0], self.draws).mean(1)

    def loss_fn(self, generators: Sequence[torch.Generator]) -> LossFn:
        """The closure PGD calls each step; it advances every sample's own generator."""

        def fn(x_adv: torch.Tensor, step: int) -> torch.Tensor:
            t, w, noise = self.draw(generators)
            return self.loss(x_adv, t, w, noise)

        return fn

    @torch.no_grad()
    def evaluate(self, x01: torch.Tensor, generators: Sequence[torch.Generator],
                 repeats: int = 4) -> torch.Tensor:
        """Average per-sample loss over ``repeats`` draws (used by checks and reports)."""
        total = torch.zeros(x01.shape[0])
        for _ in range(repeats):
            t, w, noise = self.draw(generators)
            total += self.loss(x01, t, w, noise).float().cpu()
        return total / repeats
