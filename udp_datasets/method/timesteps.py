"""Timestep distributions: plain UDP (uniform) and the scheduler-aware EUDP family.

The perturbation enters x_t as sqrt(alpha_bar_t) * delta while the noise enters as
sqrt(1 - alpha_bar_t) * eps, so at large t its gradient is mostly noise. EUDP
therefore spends the PGD budget where the perturbation is visible to the model,
with weights computed from the surrogate's *own* ``alphas_cumprod`` (linear,
cosine or scaled-linear schedules all work).
"""

from __future__ import annotations

import torch

from ..config import ProtectionConfig


def timestep_weights(alphas_cumprod: torch.Tensor, config: ProtectionConfig) -> torch.Tensor:
    """Unnormalised w(t) over all training timesteps, as float64."""
    abar = alphas_cumprod.detach().double().cpu()
    n = abar.numel()
    kind = config.timesteps
    if kind == "uniform":
        w = torch.ones(n, dtype=torch.float64)
    elif kind == "eudp":
        w = abar.sqrt() ** config.gamma
    elif kind == "snr":
        w = (abar / (1 - abar).clamp_min(1e-12)).clamp(max=config.snr_clip)
    elif kind == "range":
        w = torch.zeros(n, dtype=torch.float64)
        t_max = n - 1 if config.t_max is None else min(config.t_max, n - 1)
        w[config.t_min: t_max + 1] = 1.0
    else:  # pragma: no cover - validated by the config
        raise ValueError(kind)
    if not torch.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"timesteps={kind!r} gives no usable timestep for this scheduler")
    return w


class TimestepSampler:
    """Draws per-sample timesteps (and loss weights) from a scheduler-derived p(t).

    In ``sample`` mode t ~ p(t) and every weight is 1; in ``weight`` mode t is uniform
    and the loss is weighted by p(t) / mean(p), which has the same expectation.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, config: ProtectionConfig):
        w = timestep_weights(alphas_cumprod, config)
        self.probs = (w / w.sum()).float()
        self.mode = config.timestep_mode
        self.num_timesteps = w.numel()
        self._relative = (self.probs * self.num_timesteps).float()  # p(t) / mean p

    def sample(self, generator: torch.Generator, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (timesteps[int64], loss_weights[float32]) drawn with ``generator``."""
        if self.mode == "sample":
            t = torch.multinomial(self.probs, n, replacement=True, generator=generator)
            return t, torch.ones(n)
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator)
        return t, self._relative[t]
