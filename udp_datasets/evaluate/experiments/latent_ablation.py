"""The latent-diffusion ablation: does protection work where a VAE encoder sits in front?

    udp-datasets ablation --latent --out latent-ablation

Pixel-space protection measured no effect (docs/efficacy.md). Stable-Diffusion-like
models never see pixels: a denoiser is fine-tuned on ``scaling_factor * E(x)``. This
run builds that regime offline and measures it end to end:

1. A lossy SD-shaped VAE (8x downsampling, 4 latent channels) trained on a
   *pretraining* split of the bundled photo patches (64 px -> 4 x 8 x 8 latents).
2. A latent victim UNet (``latent-victim``) pretrained on the pretraining split's
   clean latents; a smaller, differently shaped latent UNet pretrained the same
   way is the protector's surrogate (a latent pair with the same frozen VAE).
3. Phase 1 at 8/255: clean, random noise, adversarial / unlearnable with uniform
   and EUDP timesteps, the encoder objective (away / pattern) and adversarial+EUDP
   with an encoder term. Each training set fine-tunes the pretrained victim with
   one recipe and seed; DDIM samples are decoded and scored against held-out clean
   images. The *amplification* of each perturbation by the encoder is measured
   directly (latent shift, decoded PSNR).
4. Phase 2: the variant with the largest victim FD ratio at 4, 8, 16, 32 /255
   beside random noise (shared with the pixel ablation's sweep).

Every stage is cached under ``out`` (VAE, pretrained models, protected sets,
victims), so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...config import ProtectionConfig
from ..data import data_hash
from ..metrics.arrays import hwc_to_nchw
from ..metrics.fidelity import perturbation_cost, psnr, psnr_per_image
from ..report import fmt, side_by_side_grids
from ..victims.autoencoder import (AutoencoderConfig, decode_latents, encode_distribution, load_autoencoder,
                                   reconstruction_psnr, train_autoencoder)
from ..victims.latent import LatentRecipe, pretrain_config, pretrain_latent_denoiser, save_latent_surrogate
from ..victims.pixel import VictimConfig
from .ablation import VARIANTS, budget_sweep, render_tables, sweep_plot
from .protected_sets import cached_protect, random_noise
from .victim_runs import EvalSettings, run_victims, victim_folder

logger = logging.getLogger(__name__)

# CPU-sized protection recipe: 40 PGD steps through the VAE encoder; unlearnable fits (fine-tunes
# the pretrained latent surrogate min-min) on 256 of the training images.
LATENT_BASE = ProtectionConfig(steps=40, batch_size=64, fit_rounds=5, fit_surrogate_steps=40, fit_pgd_steps=5,
                               fit_max_samples=256, fit_batch_size=32, fit_lora_rank=0)
ENCODER_WEIGHT = 10.0
"""At the ball's random start the encoder term's pixel gradient is ~10x smaller than the
denoising loss's (measured on this setup's surrogate): 10 gives the two an equal share."""
LATENT_VARIANTS: dict[str, dict[str, Any]] = {
    **VARIANTS,  # the pixel ablation's four, then the encoder objective and term
    "encoder(away)": {"objective": "encoder", "encoder_target": "away"},
    "encoder(pattern)": {"objective": "encoder", "encoder_target": "pattern"},
    "adversarial+eudp+encoder": {"objective": "adversarial", "timesteps": "eudp", "encoder_weight": ENCODER_WEIGHT},
}
LATENT_VICTIM = VictimConfig(architecture="latent-victim", resolution=64, train_steps=400, batch_size=32,
                             learning_rate=2e-4, warmup_steps=20, sample_steps=50)
"""Fine-tuning recipe (the victims of the table): SD-style lower learning rate, short warm-up."""


@dataclass(frozen=True)
class LatentSetup:
    """Data split and the models built before any protection (CPU-sized defaults)."""

    size: int = 64
    pretrain_count: int = 800
    """Clean images the VAE, the victim's initialisation and the surrogate are trained on."""
    train_count: int = 400
    """Images that are protected and fine-tuned on."""
    holdout_count: int = 300
    """Clean images never trained on: the reference the samples are scored against."""
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    pretrain_steps: int = 2000
    pretrain_lr: float = 1e-3
    surrogate_steps: int = 1500
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["autoencoder"] = self.autoencoder.to_dict()
        return d


def split_data(setup: LatentSetup) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """(pretrain, train, holdout): disjoint sets of patches of the bundled photographs."""
    from ...sources.bundled import photo_patches

    n = setup.pretrain_count + setup.train_count + setup.holdout_count
    images = photo_patches(setup.size, n, seed=setup.seed)
    perm = np.random.default_rng(setup.seed).permutation(n)
    a, b = setup.pretrain_count, setup.pretrain_count + setup.train_count
    pick = lambda idx: [images[i] for i in np.sort(idx)]  # noqa: E731
    return pick(perm[:a]), pick(perm[a:b]), pick(perm[b:])


def cached_autoencoder(images: Sequence[np.ndarray], config: AutoencoderConfig, directory: Path,
                       progress: bool = True) -> dict[str, Any]:
    """Train the VAE once per (recipe, images); returns its training summary."""
    key = {"config": config.to_dict(), "data": data_hash(images)}
    log = directory / "autoencoder_training.json"
    key_file = directory / "autoencoder_key.json"
    if not (key_file.exists() and json.loads(key_file.read_text()) == key and log.exists()):
        train_autoencoder(images, config, directory, progress=progress)
        key_file.write_text(json.dumps(key, sort_keys=True))
    summary = json.loads(log.read_text())
    summary.pop("loss_history", None)
    return summary


def latent_amplification(vae, clean: Sequence[np.ndarray], perturbed: Sequence[np.ndarray]) -> dict[str, float]:
    """How much the encoder magnifies a perturbation, paired by position.

    ``latent_shift``: mean ||E(x+d) - E(x)|| / ||E(x)|| (posterior means, scaled latents);
    ``pixel_shift``: mean ||d|| / ||x|| with x in [-1, 1] as the encoder sees it; their ratio is
    the amplification. ``decoded_psnr_db``: PSNR of D(E(x+d)) vs D(E(x)), to set beside the
    perturbation's own PSNR of x+d vs x.
    """
    zc, _ = encode_distribution(vae, clean)
    zp, _ = encode_distribution(vae, perturbed)
    latent = ((zp - zc).flatten(1).norm(dim=1) / zc.flatten(1).norm(dim=1).clamp_min(1e-12)).mean().item()
    xc = np.stack(clean).astype(np.float64) / 127.5 - 1
    xp = np.stack(perturbed).astype(np.float64) / 127.5 - 1
    pixel = float(np.mean(np.linalg.norm((xp - xc).reshape(len(xc), -1), axis=1)
                          / np.maximum(np.linalg.norm(xc.reshape(len(xc), -1), axis=1), 1e-12)))
    dc, dp = decode_latents(vae, zc), decode_latents(vae, zp)
    return {"latent_shift": float(latent), "pixel_shift": pixel,
            "amplification": float(latent / pixel) if pixel > 0 else float("nan"),
            "decoded_psnr_db": float(psnr(hwc_to_nchw(dc), hwc_to_nchw(dp)))}


def run_latent_ablation(out: str | Path, settings: EvalSettings | None = None, setup: LatentSetup = LatentSetup(),
                        base: ProtectionConfig = LATENT_BASE, variants: dict[str, dict[str, Any]] | None = None,
                        sweep: bool = True, levels: tuple[int, ...] = (4, 8, 16, 32),
                        progress: bool = True) -> dict[str, Any]:
    """Run (or resume) the whole latent ablation into ``out``; writes latent_ablation.json / _table.md."""
    settings = settings or EvalSettings(victim=LATENT_VICTIM, num_samples=300, attacks=())
    variants = LATENT_VARIANTS if variants is None else variants
    if settings.victim.resolution != setup.size:
        raise ValueError(f"settings.victim.resolution={settings.victim.resolution} must equal the image size "
                         f"{setup.size} (victims are scored on decoded {setup.size} px images)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    timings: dict[str, float] = {}
    pretrain, train, holdout = split_data(setup)
    models = _build_models(out, setup, settings, pretrain, holdout, timings, progress)
    vae = models.vae
    base = base.replace(surrogate=str(models.pair_dir.resolve()))
    recipe = LatentRecipe(settings.victim, models.vae_dir, models.init_dir)

    protected: dict[str, list[np.ndarray]] = {"random-noise": random_noise(train, base.budget_levels)}
    for name, changes in variants.items():
        t0 = time.perf_counter()
        protected[name] = cached_protect(name, train, base.replace(**changes), out, salt=models.salt)
        _lap(timings, f"protect {name}", t0)
    cost = {name: perturbation_cost(train, imgs) for name, imgs in protected.items()}
    amplification = {name: latent_amplification(vae, train, imgs) for name, imgs in protected.items()}

    t0 = time.perf_counter()
    reshuffled = [train[i] for i in np.random.default_rng(1).permutation(len(train))]
    phase1 = run_victims({"clean": train, "clean (reshuffled)": reshuffled, **protected}, holdout, train, out,
                         settings, progress=progress, recipe=recipe)
    _lap(timings, "victims at base budget", t0)
    victims = phase1["victims"]
    best = max(variants, key=lambda n: victims[n]["fd_ratio_vs_clean"]) if variants else None

    sweep_rows: dict[str, dict[str, Any]] = {}
    if sweep and best is not None:
        t0 = time.perf_counter()
        sweep_rows = budget_sweep(
            best, base.replace(**variants[best]),
            lambda name, cfg: cached_protect(name, train, cfg, out, salt=models.salt),
            train, holdout, out, settings, victims, protected, recipe=recipe, levels=levels,
            measure=lambda imgs: latent_amplification(vae, train, imgs))
        sweep_plot(sweep_rows, out / "latent_budget_sweep.png", best, extra={
            "vae_fd_ratio_vs_clean": (f"{best}: FD vs D(E(held-out)) / clean", "o-"),
            "random_noise_vae_fd_ratio_vs_clean": ("random noise: FD vs D(E(held-out)) / clean", "s--")})
        _lap(timings, "budget sweep", t0)

    _add_paired_psnr(out, victims, sweep_rows)
    _write_grids(out, holdout, train, protected, phase1["samples"], victims, variants, best, vae)
    result = {
        "kind": "latent", "settings": settings.to_dict(), "setup": setup.to_dict(), "base_config": base.to_dict(),
        "variants": variants, "autoencoder": models.vae_summary,
        "data": {"source": f"bundled photo patches at {setup.size}px", "pretrain": len(pretrain),
                 "train": len(train), "holdout": len(holdout)},
        "victims": victims, "perturbation": cost, "amplification": amplification, "best_variant": best,
        "budget_sweep": sweep_rows, "timings_s": timings, "seconds": round(time.perf_counter() - start, 1)}
    (out / "latent_ablation.json").write_text(json.dumps(result, indent=2))
    (out / "latent_ablation_table.md").write_text(render_latent_tables(result))
    return result


def _lap(timings: dict[str, float], name: str, t0: float) -> None:
    timings[name] = round(time.perf_counter() - t0, 1)


@dataclass
class _LatentModels:
    """What the latent ablation builds before any protection (all cached under ``out``)."""

    vae_dir: Path
    vae: Any
    vae_summary: dict[str, Any]
    init_dir: Path
    pair_dir: Path
    salt: str
    """Ties cached protected sets to the surrogate pair's weights."""


def _build_models(out: Path, setup: LatentSetup, settings: EvalSettings, pretrain: list[np.ndarray],
                  holdout: list[np.ndarray], timings: dict[str, float], progress: bool) -> _LatentModels:
    """The VAE, the victims' pretrained initialisation and the protector's latent surrogate pair."""
    t0 = time.perf_counter()
    vae_dir = out / "autoencoder"
    vae_summary = cached_autoencoder(pretrain, setup.autoencoder, vae_dir, progress)
    _lap(timings, "autoencoder", t0)
    vae = load_autoencoder(vae_dir, device=settings.victim.device)
    vae_summary["holdout_reconstruction_psnr_db"] = reconstruction_psnr(vae, holdout)

    t0 = time.perf_counter()
    pre_cfg = pretrain_config(settings.victim, setup.pretrain_steps, setup.pretrain_lr)
    init_dir = pretrain_latent_denoiser(pretrain, pre_cfg, vae_dir, out / "pretrained" / "victim", progress=progress)
    _lap(timings, "pretrain victim", t0)
    t0 = time.perf_counter()
    sur_cfg = pretrain_config(settings.victim, setup.surrogate_steps, setup.pretrain_lr)
    pair_dir = save_latent_surrogate(pretrain, sur_cfg, vae_dir, out / "surrogate-pair",
                                     out / "pretrained" / "surrogate", progress=progress)
    _lap(timings, "pretrain surrogate", t0)
    salt = (pair_dir / "source_sha256.txt").read_text()[:12]
    return _LatentModels(vae_dir=vae_dir, vae=vae, vae_summary=vae_summary, init_dir=init_dir, pair_dir=pair_dir,
                         salt=salt)


def _add_paired_psnr(out: Path, victims: dict[str, Any], sweep_rows: dict[str, dict[str, Any]]) -> None:
    """Same seeds, same init and recipe: each victim's samples pair with the clean victim's."""
    for name, row in victims.items():
        if name not in ("reference", "clean"):
            row["sample_psnr_vs_clean_victim_db"] = paired_psnr(out, name)
    for row in sweep_rows.values():
        row["sample_psnr_vs_clean_victim_db"] = paired_psnr(out, row["victim_name"])
        row["random_noise_sample_psnr_vs_clean_victim_db"] = paired_psnr(out, row["random_noise_victim_name"])


def _write_grids(out: Path, holdout: list[np.ndarray], train: list[np.ndarray],
                 protected: dict[str, list[np.ndarray]], samples: dict[str, np.ndarray], victims: dict[str, Any],
                 variants: dict[str, dict[str, Any]], best: str | None, vae: Any) -> None:
    """latent_samples.png (every victim), latent_samples_zoom.png (the telling ones), latent_protected.png."""
    side_by_side_grids({"held-out real": np.stack(holdout),
                        **{f"victim: {k}": v for k, v in samples.items()}},
                       out / "latent_samples.png", rows=3, cols=3, cell=64)
    if variants:
        changed = min(variants, key=lambda n: victims[n]["sample_psnr_vs_clean_victim_db"])
        focus = dict.fromkeys(["clean", "random-noise", best, changed])
        side_by_side_grids({f"victim: {k}": samples[k] for k in focus}, out / "latent_samples_zoom.png",
                           rows=4, cols=4, cell=64)
    protected_grid(train, protected, vae, out / "latent_protected.png")


def paired_psnr(out: Path, name: str) -> float:
    """PSNR (dB) of victim ``name``'s samples against the clean victim's at the same seeds.

    The victims share initialisation, recipe and sampling noise, so this is how far the
    training data moved what the victim generates (FD can miss a shared texture or pattern).
    """
    load = lambda n: np.load(victim_folder(out, n) / "samples.npz")["samples"]  # noqa: E731
    a, b = hwc_to_nchw(load("clean")), hwc_to_nchw(load(name))
    return float(np.mean(np.minimum(psnr_per_image(a, b), 100.0)))  # identical: 100 dB


def protected_grid(train: Sequence[np.ndarray], protected: dict[str, list[np.ndarray]], vae, path: Path,
                   count: int = 4) -> Path:
    """The first training images per set (columns: images; rows: x+d, then D(E(x+d))), side by side."""
    panels: dict[str, np.ndarray] = {}
    for name, imgs in {"clean": list(train), **protected}.items():
        x = np.stack(imgs[:count])
        z, _ = encode_distribution(vae, x)
        panels[name] = np.concatenate([x, decode_latents(vae, z)])
    return side_by_side_grids(panels, path, rows=2, cols=count, cell=64)


def render_latent_tables(result: dict[str, Any]) -> str:
    """The pixel ablation's tables plus the amplification table and the VAE's numbers."""
    vae = result["autoencoder"]
    ref = result["victims"].get("reference", {}).get("clean_train_vs_holdout", {})
    lines = [render_tables(result),
             f"Reference: the clean training images score FD {fmt(ref.get('fd'), '{:.3f}')} against the "
             f"held-out images, their VAE round trips D(E(x)) "
             f"{fmt(ref.get('decoded_training_fd'), '{:.3f}')} (the floor of any latent victim); against "
             f"D(E(held-out)) the round trips score {fmt(ref.get('vae_fd'), '{:.3f}')}.", "",
             "Encoder amplification (posterior means, scaled latents; paired by image):", "",
             "| perturbation | pixel shift ‖d‖/‖x‖ | latent shift ‖E(x+d)−E(x)‖/‖E(x)‖ | amplification | "
             "PSNR x+d vs x (dB) | PSNR D(E(x+d)) vs D(E(x)) (dB) |", "|---|---|---|---|---|---|"]
    for name, a in result["amplification"].items():
        c = result["perturbation"][name]
        lines.append(f"| {name} | {a['pixel_shift']:.4f} | {a['latent_shift']:.4f} | "
                     f"{fmt(a['amplification'], '{:.2f}x')} | {c['psnr_db']:.2f} | {a['decoded_psnr_db']:.2f} |")
    if result["budget_sweep"]:
        lines += ["", f"Amplification along the budget sweep of `{result['best_variant']}`, and the victims "
                  "against D(E(held-out)) and against the clean victim's samples (same seeds):", "",
                  "| epsilon | latent shift | amplification | PSNR D(E(x+d)) vs D(E(x)) (dB) | "
                  "victim FD vs D(E(held-out)) / clean | random noise, same | samples vs clean victim's (dB) | "
                  "random noise, same (dB) |", "|---|---|---|---|---|---|---|---|"]
        for lv, row in result["budget_sweep"].items():
            lines.append(f"| {lv}/255 | {row['latent_shift']:.4f} | {fmt(row['amplification'], '{:.2f}x')} | "
                         f"{row['decoded_psnr_db']:.2f} | {fmt(row.get('vae_fd_ratio_vs_clean'), '{:.2f}x')} | "
                         f"{fmt(row.get('random_noise_vae_fd_ratio_vs_clean'), '{:.2f}x')} | "
                         f"{fmt(row.get('sample_psnr_vs_clean_victim_db'), '{:.2f}')} | "
                         f"{fmt(row.get('random_noise_sample_psnr_vs_clean_victim_db'), '{:.2f}')} |")
    lines += ["", f"VAE: reconstruction PSNR {vae['reconstruction_psnr_db']:.2f} dB on its training images, "
                  f"{vae['holdout_reconstruction_psnr_db']:.2f} dB on the held-out images, scaling factor "
                  f"{vae['scaling_factor']:.4f}, trained in {vae['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"
