"""``udp-datasets demo``: the whole job offline, in a few CPU minutes, in the regime that works.

Builds a small ``datasets.Dataset`` of real photographs (RGB, 64x64) and face crops (grey, 25x25) that
ship with scikit-image, protects it through the **shipped latent pair** (``--surrogate taef2``: TAEF2 +
its small latent UNet, in the package) with config version 2's method for latent surrogates
(``config.LATENT_DEFAULTS_V2``) by ``ds.map(protector, batched=True)``, and writes:

- ``side_by_side.png``: per image, clean | protected | perturbation x16 (centred at grey) | TAEF2's
  decode of the clean image | its decode of the protected image (what a latent model trains on);
- ``summary.json``: count, time, L-inf, pixel PSNR, and, measured through the pair's encoder, the
  latent shift ||E(x+d) - E(x)|| / ||E(x)|| and the PSNR of the protected decode against the clean
  decode, beside the same for uniform random noise of the same budget;
- ``protected/``: the protected dataset (``save_to_disk``).

``--evaluate`` adds a small few-shot check (:func:`run_demo_evaluation`): the few-shot study on one
structured subject at one seed, clean vs the default method vs random noise, with the study's controls,
on the victim pretraining shipped in the package; its report and grids go to ``evaluate/``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import LATENT_DEFAULTS_V2, ProtectionConfig, default_config
from ..evaluate.report import side_by_side_grids
from ..images import decode_png_pixels
from ..protector import Protector
from ..sources.bundled import faces, photo_crops

logger = logging.getLogger(__name__)

LATENT_CONFIG = default_config(batch_size=16)
"""What the demo runs: ``protect``'s default since 0.3 (config version 2, no flags): the shipped latent pair
with ``LATENT_DEFAULTS_V2`` at 8/255, 40 PGD steps."""
QUICK_CONFIG = LATENT_CONFIG.replace(steps=5)

PIXEL_FIT_CONFIG = ProtectionConfig(resolution=32, fit_rounds=4, fit_surrogate_steps=20, fit_pgd_steps=5,
                                    steps=40, batch_size=16, config_version=1)
"""The demo of 0.2: the built-in pixel surrogate fitted min-min on the demo images (config version 1),
measured not to protect (docs/efficacy.md). Fit 4 rounds x 20 steps: benchmarks/bench_fit.py measured the
same surrogate gap and victim effect as 0.1's 8 x 40 at a third of the fit time (docs/performance.md)."""

DEMO_SUBJECT = "hash"
"""The check's subject: the bundled structured subject whose clean fine-tunes learn it best (lift 0.90-0.93 on
the shipped victim, docs/efficacy.md), so an erasure has the most room to show."""

COLUMNS = ("clean", "protected", "perturbation x{amp}", "TAEF2 decode: clean", "TAEF2 decode: protected")


def demo_dataset(photos_per_image: int = 4, num_faces: int = 16):
    """A mixed dataset: RGB photo crops and grey faces, with a text column kept as is."""
    import datasets

    images: list[Image.Image] = []
    captions: list[str] = []
    for i, arr in enumerate(photo_crops(64, photos_per_image)):
        images.append(Image.fromarray(arr))
        captions.append(f"photo crop {i}")
    for i, arr in enumerate(faces(num_faces)):
        images.append(Image.fromarray(arr[:, :, 0], mode="L"))
        captions.append(f"face {i}")
    return datasets.Dataset.from_dict({"image": images, "caption": captions}).cast_column(
        "image", datasets.Image())


def amplified(clean: np.ndarray, protected: np.ndarray, levels: int) -> np.ndarray:
    """The perturbation centred at grey (128), scaled so the budget spans the full range."""
    diff = protected.astype(np.int16) - clean.astype(np.int16)
    return np.clip(128 + diff * (127 / max(levels, 1)), 0, 255).astype(np.uint8)


def side_by_side(columns: dict[str, list[np.ndarray]], path: Path, cell: int = 144) -> Path:
    """One labelled column per entry of ``columns`` (each a list of (H, W, C) uint8 images, one per row;
    sizes may differ, every tile is scaled to ``cell``)."""
    rows = len(next(iter(columns.values())))
    return side_by_side_grids(columns, path, rows=rows, cols=1, cell=cell)


@torch.no_grad()
def latent_measures(surrogate: Any, clean: list[np.ndarray], perturbed: list[np.ndarray]) -> dict[str, Any]:
    """Through the pair's encoder E and decoder D, per image: the latent shift ||E(x+d) - E(x)|| / ||E(x)||,
    the PSNR (dB) of D(E(x+d)) against D(E(x)), and both decodes (uint8, the pair's working size)."""
    shifts, psnrs, dec_clean, dec_prot = [], [], [], []
    for c, p in zip(clean, perturbed):
        z = surrogate.encode(torch.stack([_tensor(c), _tensor(p)]).to(surrogate.device))
        zc, zp = z[0].float(), z[1].float()
        shifts.append(float((zp - zc).norm() / zc.norm().clamp_min(1e-12)))
        d = surrogate.decode(z).cpu()
        mse = float((d[0].double() - d[1].double()).pow(2).mean())
        psnrs.append(float("inf") if mse == 0 else float(10 * np.log10(1 / mse)))
        dec_clean.append(_uint8(d[0]))
        dec_prot.append(_uint8(d[1]))
    return {"latent_shift": shifts, "decode_psnr_db": psnrs, "decode_clean": dec_clean, "decode_protected": dec_prot}


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float() / 255


def _uint8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)


def uniform_noise(clean: list[np.ndarray], levels: int, seed: int = 0) -> list[np.ndarray]:
    """Random integer noise in [-levels, levels] per pixel (the same L-inf budget), clipped to 0-255."""
    rng = np.random.default_rng(seed)
    return [np.clip(c.astype(np.int16) + rng.integers(-levels, levels + 1, size=c.shape), 0, 255).astype(np.uint8)
            for c in clean]


def _pixels(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        return decode_png_pixels(value["bytes"])
    arr = np.asarray(value)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
            "max": round(float(np.max(values)), 4)}


def run_demo(out: str | Path = "udp-demo", quick: bool = False, evaluate: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also written as JSON). ``evaluate``: the keyword
    arguments of :func:`run_demo_evaluation` but ``out`` (``cache_dir``, ``workers``) to add its check."""
    import datasets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = QUICK_CONFIG if quick else LATENT_CONFIG
    ds = demo_dataset(photos_per_image=2 if quick else 4, num_faces=8 if quick else 16)
    start = time.perf_counter()
    protector = Protector(config, provenance_columns=True)
    protected = ds.map(protector, batched=True, batch_size=config.batch_size, desc="protect",
                       load_from_cache_file=False)
    seconds = time.perf_counter() - start
    dataset_dir = out / "protected"
    protected.save_to_disk(str(dataset_dir))

    raw = protected.cast_column("image", datasets.Image(decode=False))
    clean_px = [_pixels(v) for v in ds["image"]]
    prot_px = [_pixels(v) for v in raw["image"]]
    surrogate = protector.prepare_surrogate()
    ours = latent_measures(surrogate, clean_px, prot_px)
    noise = latent_measures(surrogate, clean_px, uniform_noise(clean_px, config.budget_levels, config.seed))

    pick = list(range(0, len(clean_px), max(len(clean_px) // 6, 1)))[:6]
    labels = [label.format(amp=f"{127 / max(config.budget_levels, 1):.0f}") for label in COLUMNS]
    images = [[clean_px[i] for i in pick], [prot_px[i] for i in pick],
              [amplified(clean_px[i], prot_px[i], config.budget_levels) for i in pick],
              [ours["decode_clean"][i] for i in pick], [ours["decode_protected"][i] for i in pick]]
    picture = side_by_side(dict(zip(labels, images)), out / "side_by_side.png")

    psnrs = [p for p in protected["udp_psnr"] if p is not None]
    summary = {
        "count": len(protected), "source_images": len(ds), "seconds": round(seconds, 2),
        "max_linf_levels": max(protected["udp_linf"]), "budget_levels": config.budget_levels,
        "mean_psnr_db": round(float(np.mean(psnrs)), 2),
        "latent_shift": _stats(ours["latent_shift"]), "decode_psnr_db": _stats(ours["decode_psnr_db"]),
        "noise_latent_shift": _stats(noise["latent_shift"]), "noise_decode_psnr_db": _stats(noise["decode_psnr_db"]),
        "measures": "latent_shift: ||E(x+d)-E(x)||/||E(x)|| through the pair's TAEF2 encoder (normalised "
                    "latents); decode_psnr_db: PSNR of D(E(x+d)) vs D(E(x)); noise_*: the same for uniform "
                    "random noise of the same L-inf budget; mean/min/max over all images",
        "picture_columns": labels,
        "config": protector.config.to_dict(),
        "surrogate": protector.surrogate_ref.to_dict() if protector.surrogate_ref else None,
        "picture": str(picture), "dataset": str(dataset_dir),
    }
    if evaluate is not None:
        summary["evaluation"] = run_demo_evaluation(out / "evaluate", **evaluate)
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    summary["summary_path"] = str(summary_path)
    logger.info("demo: %d images in %.1f s, max L-inf %d levels, mean PSNR %.2f dB, latent shift %.3f "
                "(noise %.3f), decode PSNR %.2f dB (noise %.2f dB)", summary["count"], seconds,
                summary["max_linf_levels"], summary["mean_psnr_db"], summary["latent_shift"]["mean"],
                summary["noise_latent_shift"]["mean"], summary["decode_psnr_db"]["mean"],
                summary["noise_decode_psnr_db"]["mean"])
    return summary


def default_method_preset() -> str:
    """The preset whose fields are config version 2's method: what ``protect`` runs by default, so the check
    follows a change of default instead of naming a method of its own."""
    from ..method.presets import PRESETS

    for name, values in PRESETS.items():
        if values == LATENT_DEFAULTS_V2:
            return name
    raise RuntimeError(f"no preset sets exactly config version 2's method {LATENT_DEFAULTS_V2}: name one for the "
                       "demo's check")


def run_demo_evaluation(out: str | Path, cache_dir: str | Path, workers: int = 2) -> dict[str, Any]:
    """The few-shot study on :data:`DEMO_SUBJECT`, seed 0, full fine-tuning: the clean set, the default method and
    noise at 8/255, with the study's controls, run past a failed control (the report then says first that its
    figures are a diagnostic). Uses the shipped victim pretraining (the default glyph corpus and recipe)."""
    from dataclasses import replace

    from ..evaluate.experiments import fewshot
    from ..evaluate.subjects import GLYPH_CORPUS, any_subject, read_corpus

    method = default_method_preset()
    settings = replace(fewshot.REDUCED, subjects=(DEMO_SUBJECT,), methods=("noise", method), seeds=(0,),
                       modes=("full",), purifications=(), followup_sets=(), past_failed_controls=True, workers=workers)
    subjects = {DEMO_SUBJECT: any_subject(DEMO_SUBJECT, 0, settings.size, settings.n_train, settings.n_heldout,
                                          settings.n_judge)}
    corpus, record = read_corpus(GLYPH_CORPUS, settings.pretrain.corpus_count, settings.pretrain.corpus_seed,
                                 settings.size, named_by_user=False)
    report = fewshot.run_fewshot(out, settings, subjects, corpus, cache_dir, corpus_source=record["description"])
    rows = {row["set"]: row["per_subject"][DEMO_SUBJECT] for row in report["tables"].get("full", [])}
    controls = report["controls"]
    grid = report["files"]["grids"].get(f"{DEMO_SUBJECT}_full")  # relative to the report's folder
    return {"subject": DEMO_SUBJECT, "method": method, "verdict": report["verdict"],
            "controls_passed": controls["passed"], "controls": controls["per_subject"].get(DEMO_SUBJECT),
            "erasure": {name: row["erasure"] for name, row in rows.items()},
            "subject_score": {name: row["score"] for name, row in rows.items()},
            "report": str(Path(out) / "report.md"), "samples_grid": str(Path(out) / grid) if grid else None,
            "seconds": round(report["timings"]["total"], 1)}
