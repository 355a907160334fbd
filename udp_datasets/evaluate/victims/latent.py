"""Latent-diffusion victims: what a Stable-Diffusion-style fine-tuner would do with the images.

SD is never trained from scratch on a small dataset: a latent denoiser pretrained
on a large clean corpus is *fine-tuned* on the new images through the same
frozen VAE. :class:`LatentRecipe` reproduces that offline: the victim UNet
(``latent-victim``, an architecture unlike the latent surrogate's) is pretrained
once on the clean latents of a disjoint pretraining set, then fine-tuned with one
recipe and seed on the latents of clean or protected training images. The
latents are ``scaling_factor * E(x)`` with a fresh posterior *sample* at every
step (SD's ``latent_dist.sample()``), and a random flip happens in pixel space
(both mirror images are encoded). Samples are DDIM latents decoded by the VAE.

Everything reuses the pixel victims' loop (:func:`~.pixel.train_denoiser`) and
sampler (:func:`~.pixel.sample_tensors`); :func:`~..experiments.victim_runs.run_victims`
caches, scores and reports both kinds the same way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...models.latent import sd_scheduler
from .autoencoder import decode_latents, encode_distribution, load_autoencoder, reconstruct
from ..data import Images, data_hash
from ..metrics.scorer import Scorer
from .pixel import VictimConfig, VictimResult, sample_tensors, train_denoiser

logger = logging.getLogger(__name__)


def latent_training_data(vae, images: Images, flip: bool = True, posterior: str = "sample") -> dict[str, Any]:
    """Keyword arguments of :func:`train_denoiser` for ``images`` encoded by ``vae``.

    ``posterior='sample'`` draws a fresh latent every step from the VAE posterior (as SD
    fine-tuning does); ``'mean'`` trains on the posterior means.
    """
    if posterior not in ("sample", "mean"):
        raise ValueError(f"posterior={posterior!r} must be 'sample' or 'mean'")
    mean, std = encode_distribution(vae, images)
    out: dict[str, Any] = {"data": mean, "std": std if posterior == "sample" else None}
    if flip:
        fmean, fstd = encode_distribution(vae, images, flip=True)
        out.update(flipped=fmean, flipped_std=fstd if posterior == "sample" else None)
    return out


def train_latent_victim(images: Images, config: VictimConfig, vae, output_dir: str | Path, *,
                        init_dir: str | Path | None = None, model: torch.nn.Module | None = None,
                        posterior: str = "sample", desc: str = "latent victim",
                        progress: bool = True) -> VictimResult:
    """Train (``init_dir`` given: fine-tune) a latent DDPM on the VAE latents of ``images``."""
    data = latent_training_data(vae, images, flip=config.random_flip, posterior=posterior)
    scheduler = None if init_dir is not None else sd_scheduler(config.num_train_timesteps)
    return train_denoiser(data.pop("data"), config, output_dir, desc=desc, progress=progress, model=model,
                          init_dir=init_dir, scheduler=scheduler, log_extra={"num_images": len(images),
                                                                           "posterior": posterior}, **data)


def sample_latent_victim(pipeline_dir: str | Path, vae, num_images: int, seed: int = 0, steps: int = 50,
                         eta: float = 1.0, device: str = "auto", progress: bool = True) -> np.ndarray:
    """DDIM latents at fixed seeds, decoded by ``vae``: (N, H, W, 3) uint8."""
    z = sample_tensors(pipeline_dir, num_images, seed=seed, steps=steps, device=device, progress=progress, eta=eta)
    return decode_latents(vae, z)


def pretrain_latent_denoiser(images: Images, config: VictimConfig, vae_dir: str | Path, output_dir: str | Path,
                             model: torch.nn.Module | None = None, posterior: str = "sample",
                             progress: bool = True, desc: str = "pretrain") -> Path:
    """Pretrain a latent denoiser on clean images once; reused while images, recipe and VAE are unchanged.

    ``model`` None trains ``config.architecture``; the folder (``unet/``, ``scheduler/``) is then
    the ``init_dir`` of every fine-tuned victim.
    """
    from ...models import weights_sha256

    output_dir = Path(output_dir)
    # private config keys (e.g. _use_default_values, a set) are left out: their order varies per process
    arch = None if model is None else {k: v for k, v in model.config.items() if not k.startswith("_")}
    key = {"config": config.to_dict(), "data": data_hash(images), "vae": weights_sha256(vae_dir),
           "posterior": posterior, "model": arch}
    key = json.loads(json.dumps(key, sort_keys=True, default=str))
    key_file = output_dir / "pretrain_key.json"
    if key_file.exists() and json.loads(key_file.read_text()) == key and (output_dir / "unet").is_dir():
        logger.info("%s: reusing %s", desc, output_dir)
        return output_dir
    vae = load_autoencoder(vae_dir, device=config.device)
    train_latent_victim(images, config, vae, output_dir, model=model, posterior=posterior, desc=desc,
                        progress=progress)
    key_file.write_text(json.dumps(key, sort_keys=True))
    return output_dir


def save_latent_surrogate(images: Images, config: VictimConfig, vae_dir: str | Path, pair_dir: str | Path,
                          work_dir: str | Path, progress: bool = True) -> Path:
    """The protector's latent pair: the same frozen VAE + a *smaller*, differently shaped UNet
    (``tiny_models.build_tiny_latent_unet``) pretrained on clean latents, as a latent pair folder."""
    from diffusers import DDPMScheduler, UNet2DModel

    from ...models import weights_sha256
    from ...models.latent import save_latent_pair
    from ..tiny_models import build_tiny_latent_unet

    vae = load_autoencoder(vae_dir, device="cpu")
    latent = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    unet = build_tiny_latent_unet(sample_size=latent, channels=vae.config.latent_channels, seed=config.seed)
    trained = pretrain_latent_denoiser(images, config, vae_dir, work_dir, model=unet, progress=progress,
                                       desc="pretrain surrogate")
    pair_dir = Path(pair_dir)
    source = weights_sha256(trained)
    marker = pair_dir / "source_sha256.txt"
    if marker.exists() and marker.read_text() == source:
        return pair_dir
    save_latent_pair(pair_dir, vae, UNet2DModel.from_pretrained(trained / "unet", use_safetensors=True),
                     DDPMScheduler.from_pretrained(trained / "scheduler"))
    marker.write_text(source)
    return pair_dir


class LatentRecipe:
    """Victims that fine-tune a pretrained latent DDPM through a frozen VAE (see module doc).

    ``victim`` is the fine-tuning recipe; ``init_dir`` the pretrained denoiser folder.
    """

    def __init__(self, victim: VictimConfig, vae_dir: str | Path, init_dir: str | Path, posterior: str = "sample"):
        self.victim = victim
        self.vae_dir, self.init_dir, self.posterior = Path(vae_dir), Path(init_dir), posterior
        self._vae = None
        self._key: dict[str, Any] | None = None
        self._vae_scorer_for: Any = None
        self._vae_scorer_obj: Any = None

    @property
    def vae(self):
        if self._vae is None:
            self._vae = load_autoencoder(self.vae_dir, device=self.victim.device)
        return self._vae

    def cache_key(self) -> dict[str, Any]:
        if self._key is None:
            from ...models import weights_sha256

            self._key = {"kind": "latent", "vae": weights_sha256(self.vae_dir),
                         "init": weights_sha256(self.init_dir), "posterior": self.posterior}
        return self._key

    def train(self, images: Images, victim_dir: Path, desc: str, progress: bool) -> list[float]:
        return train_latent_victim(images, self.victim, self.vae, victim_dir, init_dir=self.init_dir,
                                   posterior=self.posterior, desc=desc, progress=progress).loss_history

    def sample(self, victim_dir: Path, num_samples: int, seed: int, progress: bool) -> np.ndarray:
        return sample_latent_victim(victim_dir, self.vae, num_samples, seed=seed, steps=self.victim.sample_steps,
                                    eta=self.victim.sample_eta, device=self.victim.device, progress=progress)

    ratio_keys = ("vae_fd",)

    def extra_scores(self, scorer: Any, images: Images, limit: int,
                     samples: np.ndarray | None = None) -> dict[str, float]:
        """Scores that separate the VAE's own loss from what the latent victim learned.

        ``decoded_training_fd``: FD of D(E(training images)), what a perfect latent victim of
        this set would score. ``vae_fd`` / ``vae_precision`` / ``vae_recall``: the samples
        against D(E(held-out)) in features fitted on D(E(clean training images)), so the blur
        every decoded image shares drops out (reference row: D(E(clean training images)), the
        floor in that space).
        """
        decoded = list(reconstruct(self.vae, list(images)[:limit]))
        out = {"decoded_training_fd": scorer.score(decoded)["fd"]}
        vae_scorer = self._vae_scorer(scorer)
        v = vae_scorer.score(decoded if samples is None else list(samples))
        out.update(vae_fd=v["fd"], vae_precision=v["precision"], vae_recall=v["recall"])
        return out

    def _vae_scorer(self, scorer: Any):
        """A :class:`~..metrics.scorer.Scorer` on the VAE round trips of ``scorer``'s own split (cached)."""
        if self._vae_scorer_for is not scorer:
            self._vae_scorer_obj = Scorer(list(reconstruct(self.vae, scorer.train_images)),
                                          list(reconstruct(self.vae, scorer.holdout_images)), scorer.settings)
            self._vae_scorer_for = scorer
        return self._vae_scorer_obj


def pretrain_config(finetune: VictimConfig, steps: int, learning_rate: float = 1e-3,
                    warmup_steps: int = 100) -> VictimConfig:
    """The pretraining recipe: the fine-tuning one with its own length and learning rate."""
    return replace(finetune, train_steps=steps, learning_rate=learning_rate, warmup_steps=warmup_steps)
