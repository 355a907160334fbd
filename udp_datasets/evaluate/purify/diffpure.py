"""DiffPure (Nie et al., ICML 2022) in latent space: noise the image's latent to a moderate t, then
denoise it with a clean pretrained diffusion model and decode.

Hönig et al. (2024) broke published protections with it: small adversarial structure is drowned by
the forward noise, and the clean model's reverse process fills in natural content instead. Here the
clean model is the few-shot study's pretrained latent victim, loaded as a latent pair (TAEF2 + UNet)
by :func:`udp_datasets.load_surrogate`, so ``model.encode`` / ``model.decode`` are its normalised
latents and ``model.predict_noise`` its denoiser. ``t_star`` = 300 of 1000 (SD's scaled-linear
schedule: ``sqrt(abar)`` = 0.80, i.e. noise of std 0.60 on unit-variance latents) keeps the
image's layout and colours and removes fine structure; the reverse pass takes ``steps``
deterministic DDIM steps. Clean images go through the same purification in every study.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


@torch.no_grad()
def diffpure(images: Sequence[np.ndarray], model: Any, t_star: int = 300, steps: int = 10, seed: int = 0,
             batch: int = 64) -> list[np.ndarray]:
    """Purify (H, W, 3) uint8 images; deterministic for a given ``seed``."""
    x = torch.from_numpy(np.stack(list(images))).permute(0, 3, 1, 2).float().div(255)
    abar = model.alphas_cumprod
    times = torch.linspace(t_star, 0, steps + 1).round().long()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, x.shape[0], batch):
        z0 = model.encode(x[start:start + batch].to(model.device)).float().cpu()
        z = abar[t_star].sqrt() * z0 + (1 - abar[t_star]).sqrt() * torch.randn(z0.shape, generator=gen)
        for t_cur, t_next in zip(times[:-1], times[1:]):
            eps = model.predict_noise(z.to(model.device), t_cur.view(1).expand(z.shape[0]).to(model.device)).float().cpu()
            a_cur, a_next = abar[t_cur], (abar[t_next] if t_next > 0 else torch.tensor(1.0))
            x0 = (z - (1 - a_cur).sqrt() * eps) / a_cur.sqrt()
            z = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
        out.append(model.decode(z.to(model.device)).float().cpu())
    purified = torch.cat(out).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return list(purified)
