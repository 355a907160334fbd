"""The committed ablation: which objective / timestep sampler protects, and at what budget.

    udp-datasets ablation --out docs/efficacy

Phase 1 (epsilon 8/255): clean; random uniform noise of the same budget;
adversarial and unlearnable, each with uniform (UDP) and EUDP timesteps. All
victims share one recipe and seed, and one clean baseline. Phase 2: the variant
with the largest victim FD ratio at 4, 8, 16 and 32 /255, drawn as victim FD
against epsilon with the perturbation's PSNR on a second axis.

Results are cached per victim (by training-set hash), so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...config import ProtectionConfig
from ..data import Images, bundled_split
from ..metrics.fidelity import perturbation_cost
from ..report import fmt, results_table, side_by_side_grids
from .protected_sets import cached_protect, random_noise
from .victim_runs import EvalSettings, VictimRecipe, run_victims

logger = logging.getLogger(__name__)

# CPU-sized: fit on 256 images, 40 PGD steps per published image (see docs/efficacy.md)
BASE = ProtectionConfig(resolution=16, steps=40, fit_rounds=8, fit_surrogate_steps=40, fit_pgd_steps=5,
                        fit_max_samples=256, batch_size=256)
VARIANTS: dict[str, dict[str, Any]] = {
    "adversarial+uniform": {"objective": "adversarial", "timesteps": "uniform"},
    "adversarial+eudp": {"objective": "adversarial", "timesteps": "eudp"},
    "unlearnable+uniform": {"objective": "unlearnable", "timesteps": "uniform"},
    "unlearnable+eudp": {"objective": "unlearnable", "timesteps": "eudp"},
}
SWEEP_LEVELS = (4, 8, 16, 32)


def run_ablation(out: str | Path, settings: EvalSettings, count: int = 1200, size: int = 16,
                 base: ProtectionConfig = BASE, sweep: bool = True) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    clean, train_idx, train, holdout = bundled_split(count, size, settings.seed)
    levels = base.budget_levels

    protected: dict[str, list[np.ndarray]] = {"random-noise": random_noise(train, levels)}
    for name, changes in VARIANTS.items():
        full = cached_protect(name, clean, base.replace(**changes), out)
        protected[name] = [full[i] for i in train_idx]
    cost = {name: perturbation_cost(train, imgs) for name, imgs in protected.items()}
    # the same clean images in another order: how much victims differ by training noise alone
    reshuffled = [train[i] for i in np.random.default_rng(1).permutation(len(train))]
    phase1 = run_victims({"clean": train, "clean (reshuffled)": reshuffled, **protected}, holdout, train, out,
                         settings)
    victims = phase1["victims"]
    best = max(VARIANTS, key=lambda n: victims[n]["fd_ratio_vs_clean"])

    sweep_rows: dict[str, dict[str, Any]] = {}
    if sweep:
        def protect(name: str, cfg: ProtectionConfig) -> list[np.ndarray]:
            full = cached_protect(name, clean, cfg, out)
            return [full[i] for i in train_idx]

        sweep_rows = budget_sweep(best, base.replace(**VARIANTS[best]), protect, train, holdout, out, settings,
                                  phase1["victims"], protected)
        sweep_plot(sweep_rows, out / "budget_sweep.png", best)

    side_by_side_grids({"held-out real": np.stack(holdout), **{f"victim: {k}": v for k, v in phase1["samples"].items()}},
                       out / "ablation_samples.png", rows=4, cols=4, cell=32)
    result = {"settings": settings.to_dict(), "base_config": base.to_dict(), "variants": VARIANTS,
              "data": {"source": f"bundled photo patches {count} x {size}px", "train": len(train),
                       "holdout": len(holdout)},
              "victims": victims, "perturbation": cost, "best_variant": best, "budget_sweep": sweep_rows,
              "seconds": round(time.perf_counter() - start, 1)}
    (out / "ablation.json").write_text(json.dumps(result, indent=2))
    (out / "ablation_table.md").write_text(render_tables(result))
    return result


def budget_sweep(best: str, config: ProtectionConfig, protect: Callable[[str, ProtectionConfig], list[np.ndarray]],
                 train: Images, holdout: Images, out: Path, settings: EvalSettings, victims: dict[str, Any],
                 protected: dict[str, list[np.ndarray]], recipe: VictimRecipe | None = None,
                 levels: tuple[int, ...] = SWEEP_LEVELS,
                 measure: Callable[[list[np.ndarray]], dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """``best`` (protected by ``config``) at each budget beside random noise of that budget.

    The base budget's row reuses phase 1 (``victims``, ``protected``); ``measure`` adds
    per-set numbers (e.g. the latent amplification) to each row.
    """
    base_levels = config.budget_levels
    sets: dict[str, Images] = {"clean": train}
    for lv in levels:
        if lv == base_levels:
            continue
        sets[f"{best}@{lv}/255"] = protect(f"{best}@{lv}", config.replace(epsilon=lv / 255))
        sets[f"random-noise@{lv}/255"] = random_noise(list(train), lv)
    phase2 = run_victims(sets, holdout, train, out, settings, recipe=recipe)["victims"]
    rows: dict[str, dict[str, Any]] = {}
    for lv in levels:
        key = f"{best}@{lv}/255"
        row = victims[best] if lv == base_levels else phase2[key]
        imgs = protected[best] if lv == base_levels else sets[key]
        noise_row = victims["random-noise"] if lv == base_levels else phase2[f"random-noise@{lv}/255"]
        rows[str(lv)] = {**row, **perturbation_cost(train, imgs), **(measure(list(imgs)) if measure else {}),
                         "victim_name": best if lv == base_levels else key,
                         "random_noise_victim_name": "random-noise" if lv == base_levels else f"random-noise@{lv}/255",
                         "random_noise_fd_ratio": noise_row["fd_ratio_vs_clean"],
                         **{f"random_noise_{k}": v for k, v in noise_row.items()  # a recipe's own ratios
                            if k.endswith("_ratio_vs_clean") and k != "fd_ratio_vs_clean"}}
    return rows


def render_tables(result: dict[str, Any]) -> str:
    victims = {k: v for k, v in result["victims"].items() if k != "reference"}
    lines = [results_table(victims), "", "| perturbation | PSNR (dB) | SSIM | max L-inf |", "|---|---|---|---|"]
    for name, c in result["perturbation"].items():
        lines.append(f"| {name} | {c['psnr_db']:.2f} | {c['ssim']:.4f} | {c['linf_levels']} |")
    if result["budget_sweep"]:
        lines += ["", f"Budget sweep of `{result['best_variant']}`:", "",
                  "| epsilon | victim FD / clean | random noise FD / clean | PSNR (dB) | precision | recall |",
                  "|---|---|---|---|---|---|"]
        for lv, row in result["budget_sweep"].items():
            lines.append(f"| {lv}/255 | {fmt(row['fd_ratio_vs_clean'], '{:.2f}x')} | "
                         f"{fmt(row['random_noise_fd_ratio'], '{:.2f}x')} | {row['psnr_db']:.2f} | "
                         f"{row['precision']:.3f} | {row['recall']:.3f} |")
    return "\n".join(lines) + "\n"


def sweep_plot(rows: dict[str, dict[str, Any]], path: Path, name: str,
               extra: dict[str, tuple[str, str]] | None = None) -> None:
    """Victim FD ratio (and ``extra``: {key: (label, matplotlib format)} series) against epsilon."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = [int(k) for k in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(eps, [rows[str(e)]["fd_ratio_vs_clean"] for e in eps], "o-", label=f"{name}: victim FD / clean")
    ax.plot(eps, [rows[str(e)]["random_noise_fd_ratio"] for e in eps], "s--", label="random noise: FD / clean")
    for key, (label, style) in (extra or {}).items():
        ax.plot(eps, [rows[str(e)].get(key, float("nan")) for e in eps], style, label=label)
    ax.axhline(3.0, color="grey", linestyle=":", label="goal 3x")
    ax.set_xscale("log", base=2)
    ax.set_xticks(eps, [f"{e}/255" for e in eps])
    ax.set_xlabel("epsilon (L-inf budget)")
    ax.set_ylabel("victim FD / clean-trained victim FD")
    ax2 = ax.twinx()
    ax2.plot(eps, [rows[str(e)]["psnr_db"] for e in eps], "^:", color="tab:red", label="PSNR (dB)")
    ax2.set_ylabel("perturbation PSNR (dB)", color="tab:red")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

