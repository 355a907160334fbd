"""The one PGD core: L-inf projected sign-gradient steps on a batch of perturbations.

It knows nothing of diffusion, datasets or files: a batch of images in [0, 1],
a per-sample loss function, a direction, a budget. Both objectives and every
timestep sampler run through :func:`pgd`. ``epsilon`` is a :class:`~.budget.Budget`'s; the final
8-bit step (:meth:`~.budget.Budget.quantize`) is where that budget is proven on real pixels.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import torch

LossFn = Callable[[torch.Tensor, int], torch.Tensor]
"""(perturbed images (B, C, H, W) or a list of (1, C, H_i, W_i), step index) -> per-sample loss (B,)."""


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


def pgd(x: torch.Tensor | Sequence[torch.Tensor], loss_fn: LossFn, *, epsilon: float, alpha: float, steps: int,
        maximize: bool, init: torch.Tensor | Sequence[torch.Tensor] | None = None,
        callback: Callable[[int, torch.Tensor], None] | None = None, in_place: bool = False,
        grad_scale: float = 1.0) -> torch.Tensor | list[torch.Tensor]:
    """Return delta (same shape as ``x``) with ||delta||_inf <= epsilon and x + delta in [0, 1].

    ``x`` is a (B, C, H, W) batch, or a list of (1, C_i, H_i, W_i) images of different sizes (a
    mixed batch: ``loss_fn`` then gets the list of perturbed images and returns one loss per
    image, and a list of deltas comes back). ``maximize`` ascends the loss (error-maximising),
    otherwise descends it (error-minimising). Samples are independent: the loss must be per-sample
    and the model must not mix samples (no batch norm), so batching changes nothing but speed.
    Only ``delta`` requires a gradient. ``in_place`` updates delta in its own buffer (the same
    operations, so the same bits); ``grad_scale`` multiplies the loss before differentiating (float16
    autocast: small gradients would underflow; only their sign is used, and a NaN counts as 0).
    """
    mixed = isinstance(x, (list, tuple))
    xs = [t.detach() for t in x] if mixed else [x.detach()]
    for t in xs:
        if t.dim() != 4:
            raise ValueError(f"expected a (B, C, H, W) batch, got shape {tuple(t.shape)}")
    inits = (list(init) if mixed else [init]) if init is not None else [None] * len(xs)
    deltas = [_project(torch.zeros_like(t) if d is None else d.to(t).clone(), t, epsilon) for t, d in zip(xs, inits)]
    n = sum(t.shape[0] for t in xs)
    sign = 1.0 if maximize else -1.0
    for step in range(steps):
        for d in deltas:
            d.requires_grad_(True)
        perturbed = [t + d for t, d in zip(xs, deltas)]
        loss = loss_fn(perturbed if mixed else perturbed[0], step)
        if loss.shape != (n,):
            raise ValueError(f"loss_fn must return one loss per sample, got shape {tuple(loss.shape)}")
        total = loss.sum() if grad_scale == 1.0 else loss.float().sum() * grad_scale
        grads = torch.autograd.grad(total, deltas)
        with torch.no_grad():
            for i, (t, grad) in enumerate(zip(xs, grads)):
                if grad_scale != 1.0:
                    grad = grad.nan_to_num(nan=0.0)
                if in_place:
                    deltas[i] = _project_(deltas[i].detach().add_(grad.sign_().mul_(sign * alpha)), t, epsilon)
                else:
                    deltas[i] = _project(deltas[i] + sign * alpha * grad.sign(), t, epsilon)
        if callback is not None:
            callback(step, loss.detach())
    out = [d.detach() for d in deltas]
    return out if mixed else out[0]


def _project(delta: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    delta = delta.clamp(-epsilon, epsilon)
    return (x + delta).clamp(0.0, 1.0) - x


def _project_(delta: torch.Tensor, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """:func:`_project` in ``delta``'s own buffer: the same operations, so the same bits."""
    return delta.clamp_(-epsilon, epsilon).add_(x).clamp_(0.0, 1.0).sub_(x)
