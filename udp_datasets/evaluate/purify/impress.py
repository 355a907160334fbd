"""IMPRESS-style consistency purification (Cao et al., NeurIPS 2023): make the image consistent with
its own autoencoder round trip while staying close to what was published.

A protection that works through the VAE encoder leaves images whose round trip D(E(x)) differs
visibly from x (the encoder maps them somewhere the decoder cannot follow); a clean image is nearly
a fixed point. IMPRESS optimises the purified image ``x_p`` (Adam, from ``x_p = x``) on

    ||x_p - D(E(x_p))||^2 + lam * ||x_p - x||^2        (means over pixels, [0, 1] scale)

The paper adds an LPIPS term for the second part; we use the plain squared distance (no perceptual
network offline), said so in docs/efficacy.md. ``vae`` is any diffusers autoencoder whose
``encode(...).latents`` / ``decode(...).sample`` use [-1, 1] pixels (TAEF2 here); the latent
normalisation cancels in a round trip, so none is applied.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def impress(images: Sequence[np.ndarray], vae: Any, steps: int = 30, lr: float = 0.01, lam: float = 1.0,
            batch: int = 32) -> list[np.ndarray]:
    """Purify (H, W, 3) uint8 images (deterministic: no randomness)."""
    x_all = torch.from_numpy(np.stack(list(images))).permute(0, 3, 1, 2).float().div(255)
    out = []
    for start in range(0, x_all.shape[0], batch):
        x = x_all[start:start + batch]
        xp = x.clone().requires_grad_(True)
        opt = torch.optim.Adam([xp], lr=lr)
        for _ in range(steps):
            latents = vae.encode(xp * 2 - 1).latents
            round_trip = (vae.decode(latents).sample + 1) / 2
            loss = (xp - round_trip).pow(2).mean() + lam * (xp - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                xp.clamp_(0, 1)
        out.append(xp.detach())
    purified = torch.cat(out).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(purified)
