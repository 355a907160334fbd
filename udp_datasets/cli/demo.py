"""``udp-datasets demo``: the whole job offline, in a few CPU minutes.

Builds a small ``datasets.Dataset`` of real photographs (RGB, 64x64) and face
crops (grey, 25x25) that ship with scikit-image, fits the tiny built-in
surrogate on it, protects it with ``ds.map(protector, batched=True)`` and writes:
a side-by-side picture (clean | protected | perturbation amplified), a JSON
summary and the protected dataset (``save_to_disk``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..sources.bundled import faces, photo_crops
from ..config import ProtectionConfig
from ..images import decode_png_pixels
from ..protector import Protector

logger = logging.getLogger(__name__)

DEMO_CONFIG = ProtectionConfig(resolution=32, fit_rounds=4, fit_surrogate_steps=20, fit_pgd_steps=5,
                               steps=40, batch_size=16, config_version=1)
"""The built-in pixel surrogate fitted on the demo images (0.2's default method, config version 1; not the
shipped latent pair that ``protect`` uses by default since 0.3). Fit 4 rounds x 20 steps (0.1 fitted 8 x 40): benchmarks/bench_fit.py measured the same surrogate gap
and victim effect at a third of the fit time (docs/performance.md, "Fit")."""
QUICK_CONFIG = DEMO_CONFIG.replace(fit_rounds=2, fit_surrogate_steps=10, fit_pgd_steps=2, steps=5)


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


def side_by_side(clean: list[np.ndarray], protected: list[np.ndarray], levels: int,
                 cell: int = 128) -> Image.Image:
    """Rows of clean | protected | perturbation (scaled so the budget spans full grey)."""
    rows = []
    for c, p in zip(clean, protected):
        diff = p.astype(np.int16) - c.astype(np.int16)
        amp = np.clip(128 + diff * (127 / max(levels, 1)), 0, 255).astype(np.uint8)
        tiles = [_tile(a, cell) for a in (c, p, amp)]
        rows.append(np.concatenate(tiles, axis=1))
    grid = np.concatenate(rows, axis=0)
    header = 18
    canvas = Image.new("RGB", (grid.shape[1], grid.shape[0] + header), "white")
    canvas.paste(Image.fromarray(grid), (0, header))
    draw = ImageDraw.Draw(canvas)
    for i, label in enumerate(["clean", "protected", f"perturbation x{127 / max(levels, 1):.0f}"]):
        draw.text((i * cell + 4, 3), label, fill="black")
    return canvas


def _tile(arr: np.ndarray, cell: int) -> np.ndarray:
    img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr).convert("RGB")
    return np.asarray(img.resize((cell, cell), Image.Resampling.NEAREST))


def _pixels(value: Any) -> np.ndarray:
    if isinstance(value, dict):
        return decode_png_pixels(value["bytes"])
    arr = np.asarray(value)
    return arr[:, :, None] if arr.ndim == 2 else arr


def run_demo(out: str | Path = "udp-demo", quick: bool = False) -> dict[str, Any]:
    """Run the demo into ``out``; returns the summary (also written as JSON)."""
    import datasets

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = QUICK_CONFIG if quick else DEMO_CONFIG
    ds = demo_dataset(photos_per_image=2 if quick else 4, num_faces=8 if quick else 16)
    start = time.perf_counter()
    protector = Protector(config, provenance_columns=True)
    fit = protector.fit(ds, output_dir=out / "surrogate")
    fit_seconds = time.perf_counter() - start
    protected = ds.map(protector, batched=True, batch_size=config.batch_size, desc="protect",
                       load_from_cache_file=False)
    seconds = time.perf_counter() - start
    dataset_dir = out / "protected"
    protected.save_to_disk(str(dataset_dir))

    raw = protected.cast_column("image", datasets.Image(decode=False))
    clean_px = [_pixels(v) for v in ds["image"]]
    prot_px = [_pixels(v) for v in raw["image"]]
    pick = list(range(0, len(clean_px), max(len(clean_px) // 6, 1)))[:6]
    picture = out / "side_by_side.png"
    side_by_side([clean_px[i] for i in pick], [prot_px[i] for i in pick], config.budget_levels).save(picture)

    psnrs = [p for p in protected["udp_psnr"] if p is not None]
    summary = {
        "count": len(protected), "source_images": len(ds), "seconds": round(seconds, 2),
        "fit_seconds": round(fit_seconds, 2), "max_linf_levels": max(protected["udp_linf"]),
        "budget_levels": config.budget_levels, "mean_psnr_db": round(float(np.mean(psnrs)), 2),
        "fit_history": fit.history, "config": protector.config.to_dict(),
        "surrogate": protector.surrogate_ref.to_dict() if protector.surrogate_ref else None,
        "picture": str(picture), "dataset": str(dataset_dir),
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2))
    summary["summary_path"] = str(summary_path)
    logger.info("demo: %d images in %.1f s, max L-inf %d levels, mean PSNR %.2f dB", summary["count"],
                seconds, summary["max_linf_levels"], summary["mean_psnr_db"])
    return summary


