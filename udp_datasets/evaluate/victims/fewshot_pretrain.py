"""The few-shot study's pretrained models: TAEF2 latents of a generic corpus, a latent victim UNet and
a differently shaped latent surrogate UNet pretrained on them, each saved as a latent pair.

Everything is cached under one folder per (recipe, corpus) key, so the pretraining runs once per
machine and any later run (or another study with the same recipe) reuses it:

- ``corpus.pt``: raw TAEF2 latents of the corpus and of its mirror images, and their statistics
  (per channel, and one scalar shift = mean, scale = 1 / std); the recipe's ``per_channel`` picks the
  normalisation the pairs are saved with;
- ``victim/`` and ``surrogate/``: latent pairs (TAEF2 with that normalisation in its config + UNet +
  SD's scheduler; :func:`udp_datasets.models.latent.save_latent_pair`), so ``load_surrogate`` reads
  both: the protector attacks ``surrogate/``, DiffPure denoises with ``victim/``, and the few-shot
  victims start from ``victim/``'s UNet;
- ``victim_training.json`` and ``surrogate_training.json``: each UNet's recipe, seed, timing and final loss.

The default glyph pretraining (``PretrainRecipe()`` on the default corpus of 3,000 glyphs) ships in the
package (``models/weights/glyph_victim``, float16): :func:`install_shipped_pretraining` puts it in a cache
folder whose key is the shipped one, instead of an hour of pretraining at one thread (and of encoding the
corpus: its latent statistics ship with the weights, and no ``corpus.pt`` is written).

The victim and the surrogate differ in shape (:data:`~.fewshot.FEWSHOT_UNETS`), seed and length of
pretraining, so a protection never attacks the model it is judged on; both know TAEF2 (the encoder
is public, as SD's VAE is).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...models.denoiser_training import mirrored_raw_latents, normalised_latent_data, normalised_taef2
from ..data import data_hash
from .fewshot import TrainRecipe, build_unet, latent_statistics, to_tensor, train_unet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainRecipe:
    """How the corpus is encoded and both UNets are pretrained (the full study's defaults)."""

    corpus_count: int = 3000
    corpus_seed: int = 0
    victim: TrainRecipe = field(default_factory=lambda: TrainRecipe(
        steps=21000, learning_rate=6e-4, batch_size=32, warmup_steps=200, cosine=True, ema=0.999))
    """21,000 steps with cosine decay: on the glyph corpus this victim passes its check (samples' FD 11.9
    against the TAEF2 round trips' 10.8). 0.3's 6,000 steps failed it at 33x and made every erasure read
    negative; 0.2's 2,500 at a constant 3e-4 drew coloured smears (docs/efficacy.md, "a victim that passes
    its check"). About an hour at one torch thread on these CPUs (64 px)."""
    surrogate: TrainRecipe = field(default_factory=lambda: TrainRecipe(
        steps=1500, learning_rate=3e-4, batch_size=32, warmup_steps=100))
    victim_seed: int = 10
    surrogate_seed: int = 20
    per_channel: bool = True
    """Standardise each latent channel by its corpus mean and std (FLUX.2's convention, the default since
    0.3: docs/efficacy.md measures both); False: one scalar shift and scale for every channel."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(recipe: PretrainRecipe, corpus: Sequence[np.ndarray]) -> str:
    """Folder name of a pretraining: a hash of the recipe, the corpus and the TAEF2 weights."""
    import hashlib

    from ...models import weights_sha256
    from ...models.tiny_autoencoder import bundled_taef2_folder

    text = json.dumps({"recipe": recipe.to_dict(), "corpus": data_hash(corpus),
                       "taef2": weights_sha256(bundled_taef2_folder())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def encode_corpus(corpus: Sequence[np.ndarray], folder: Path) -> dict[str, Any]:
    """Raw TAEF2 latents of the corpus and its mirror images + their normalisation (cached)."""
    path = folder / "corpus.pt"
    if path.exists():
        return torch.load(path, weights_only=True)
    start = time.perf_counter()
    raw, raw_flip = mirrored_raw_latents(to_tensor(corpus))
    state = {"raw": raw, "raw_flip": raw_flip, **latent_statistics(raw), "seconds": time.perf_counter() - start}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    logger.info("corpus: %d images encoded (with mirrors) in %.0f s; latent std %.3f", len(corpus),
                state["seconds"], 1 / state["scale"])
    return state


def install_shipped_pretraining(folder: Path, recipe: PretrainRecipe) -> dict[str, Any] | None:
    """Install the shipped victim and surrogate UNets into ``folder`` when its key is the shipped one (the
    same recipe, corpus and TAEF2 weights), as the pairs :func:`pretrain_unet` would have saved, and return
    the corpus latents' statistics they were trained under (what :func:`encode_corpus` would measure, so the
    corpus need not be encoded); None for another key. The training records are the shipped ones, marked
    ``"source": "shipped"``."""
    from diffusers import UNet2DModel

    from ...models import weights_sha256
    from ...models.base import SurrogateError
    from ...models.latent import save_latent_pair, sd_scheduler
    from ...models.shipped import GLYPH_VICTIM, GLYPH_VICTIM_SHA256, packaged_weights

    shipped = packaged_weights(GLYPH_VICTIM)
    record = shipped_pretraining_record()
    if folder.name != f"fewshot-pretrain-{record['cache_key']}":  # a "-scratch" folder never gets them
        return None
    if weights_sha256(shipped) != GLYPH_VICTIM_SHA256:
        raise SurrogateError(f"{shipped}: the shipped pretraining's weights differ from the SHA-256 this version "
                             "recorded (a damaged install): reinstall, or pretrain with --pretrain-from-scratch")
    stats = {**record["latent_statistics"], "seconds": 0.0}
    vae = normalised_taef2(stats, recipe.per_channel)
    installed = []
    for kind in ("victim", "surrogate"):
        target, log = folder / kind, folder / f"{kind}_training.json"
        if (target / "model_index.json").exists() and log.exists():
            continue
        unet = UNet2DModel.from_pretrained(shipped / kind, use_safetensors=True, torch_dtype=torch.float32)
        save_latent_pair(target, vae, unet, sd_scheduler())
        log.write_text(json.dumps({**record["training"][kind], "source": "shipped",
                                   "shipped": f"udp_datasets/models/weights/{GLYPH_VICTIM}, {record['dtype']}"}))
        installed.append(kind)
    if installed:
        logger.info("pretraining: installed the shipped %s (%s) instead of training", " and ".join(installed),
                    GLYPH_VICTIM)
    return stats


def shipped_pretraining_record() -> dict[str, Any]:
    """The shipped pretraining's ``provenance.json`` (cache key, recipe, training records, latent statistics)."""
    from ...models.shipped import GLYPH_VICTIM, packaged_weights

    return json.loads((packaged_weights(GLYPH_VICTIM) / "provenance.json").read_text())


def shipped_pretraining_key() -> str:
    """The cache key the shipped pretraining was made under (the default glyph study's)."""
    return shipped_pretraining_record()["cache_key"]


def pretrain_unet(kind: str, folder: Path, recipe: PretrainRecipe, progress: bool = True) -> dict[str, Any]:
    """Pretrain the ``victim`` or ``surrogate`` UNet on the normalised corpus latents; save it as a
    latent pair in ``folder/kind`` (skipped if already there). Returns its timing and final loss."""
    from ...models.latent import save_latent_pair, sd_scheduler

    target, log = folder / kind, folder / f"{kind}_training.json"
    if (target / "model_index.json").exists() and log.exists():
        return json.loads(log.read_text())
    if not (folder / "corpus.pt").exists():
        raise FileNotFoundError(f"{folder / 'corpus.pt'}: encode the corpus first (encode_corpus)")
    corpus = torch.load(folder / "corpus.pt", weights_only=True)
    vae, data = normalised_latent_data(corpus, recipe.per_channel, corpus["raw"], corpus["raw_flip"])
    train, seed = (recipe.victim, recipe.victim_seed) if kind == "victim" else (recipe.surrogate, recipe.surrogate_seed)
    unet = build_unet(f"fewshot-{kind}", data.z.shape[-1], seed).requires_grad_(True)
    start = time.perf_counter()
    model, losses, _ = train_unet(unet, data, train, seed, desc=f"pretrain {kind}" if progress else None)
    save_latent_pair(target, vae, model, sd_scheduler())
    info = {"kind": kind, "seconds": time.perf_counter() - start, "final_loss": float(np.mean(losses[-100:])),
            "parameters": sum(p.numel() for p in model.parameters()), "recipe": train.to_dict(), "seed": seed,
            "loss_history": losses[::10]}
    log.write_text(json.dumps(info))
    logger.info("pretrained %s in %.0f s, final loss %.4f", kind, info["seconds"], info["final_loss"])
    return info


def load_victim_unet(folder: Path):
    """The pretrained victim UNet (``folder/victim/unet``), in eval mode."""
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(folder / "victim" / "unet", use_safetensors=True).eval()


def load_pair(folder: Path, kind: str = "victim"):
    """A pretrained latent pair as a frozen ``LatentSurrogate`` (encode / decode / predict_noise)."""
    from ...models import load_surrogate

    return load_surrogate(str(folder / kind)).freeze()
