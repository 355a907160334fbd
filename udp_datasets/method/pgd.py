"""The one PGD core: L-inf projected sign-gradient steps on a batch of perturbations.

It knows nothing of diffusion, datasets or files: a batch of images in [0, 1],
a per-sample loss function, a direction, a budget. Both objectives and every
timestep sampler run through :func:`pgd`; the final 8-bit step
(:func:`quantize_within_budget`) is where the budget is proven on real pixels.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch

LossFn = Callable[[torch.Tensor, int], torch.Tensor]
"""(perturbed images (B, C, H, W), step index) -> per-sample loss (B,)."""


class BudgetError(RuntimeError):
    """A protected image that is not within its L-inf budget: never written out."""


def sample_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator seeded from (config seed, sample key): same sample, same randomness.

    CPU generators make the random stream identical whatever device runs the model.
    """
    digest = hashlib.sha256(f"udp-datasets:{seed}:{key}".encode()).digest()
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def random_start(shape: Sequence[int], generators: Sequence[torch.Generator], epsilon: float) -> torch.Tensor:
    """Uniform noise in [-epsilon, epsilon], one generator per sample (CPU)."""
    return torch.stack([(torch.rand(tuple(shape), generator=g) * 2 - 1) * epsilon for g in generators])


def pgd(x: torch.Tensor, loss_fn: LossFn, *, epsilon: float, alpha: float, steps: int,
        maximize: bool, init: torch.Tensor | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Return delta (same shape as ``x``) with ||delta||_inf <= epsilon and x + delta in [0, 1].

    ``maximize`` ascends the loss (error-maximising), otherwise descends it
    (error-minimising). Samples are independent: the loss must be per-sample and
    the model must not mix samples (no batch norm), so batching changes nothing
    but speed. Only ``delta`` requires a gradient.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    x = x.detach()
    delta = torch.zeros_like(x) if init is None else init.to(x).clone()
    delta = _project(delta, x, epsilon)
    sign = 1.0 if maximize else -1.0
    for step in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(x + delta, step)
        if loss.shape != (x.shape[0],):
            raise ValueError(f"loss_fn must return one loss per sample, got shape {tuple(loss.shape)}")
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        with torch.no_grad():
            delta = _project(delta + sign * alpha * grad.sign(), x, epsilon)
        if callback is not None:
            callback(step, loss.detach())
    return delta.detach()


def _project(delta: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    delta = delta.clamp(-epsilon, epsilon)
    return (x + delta).clamp(0.0, 1.0) - x


def quantize_within_budget(clean: np.ndarray, perturbed: np.ndarray, levels: int) -> np.ndarray:
    """Round a perturbed float image (0-1) to uint8 and prove the budget on the result.

    Rounding can push a pixel one level past the budget, so the result is re-projected
    onto [clean - levels, clean + levels] and then checked independently; a failure
    raises :class:`BudgetError` instead of returning.
    """
    if clean.dtype != np.uint8:
        raise TypeError("clean image must be uint8")
    out = np.rint(np.clip(perturbed, 0.0, 1.0) * 255.0)
    lo = clean.astype(np.int16) - levels
    hi = clean.astype(np.int16) + levels
    out = np.clip(out, lo, hi).clip(0, 255).astype(np.uint8)
    check_budget(clean, out, levels)
    return out


def check_budget(clean: np.ndarray, protected: np.ndarray, levels: int) -> int:
    """Return the max |protected - clean| in levels, or raise :class:`BudgetError`."""
    if clean.shape != protected.shape:
        raise BudgetError(f"shape changed: {clean.shape} -> {protected.shape}")
    linf = int(np.abs(protected.astype(np.int16) - clean.astype(np.int16)).max(initial=0))
    if linf > levels:
        raise BudgetError(f"perturbation of {linf} levels exceeds the budget of {levels}")
    return linf
