"""Method switches: candidate ideas, each behind a ``ProtectionConfig`` switch, measured with the
ablation's recipe.

    udp-datasets ablation --switches --out docs/efficacy

Same data, split, victim recipe and 8/255 budget as the committed ablation (its
clean and random-noise victims are reused from the cache), so the FD ratios are
directly comparable with docs/efficacy.md's first table:

- timestep ranges: which part of the schedule (fine detail at small t, structure at
  mid t, layout at large t) an unlearnable perturbation should target;
- ``matching``: the training trajectory instead of a frozen surrogate (gradient
  matching as a per-sample directional derivative), alone and with a surrogate pool;
- ``fit_pool``: surrogates at several training stages (MetaCloak-style);
- ``clusters``: one shared error-minimising delta per cluster of similar images, with
  a surrogate trained three times longer so the shortcut can form.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data import bundled_split
from ..metrics.fidelity import perturbation_cost
from ..report import results_table, side_by_side_grids
from .ablation import BASE
from .protected_sets import cached_protect, random_noise
from .victim_runs import EvalSettings, run_victims

logger = logging.getLogger(__name__)

SWITCHES: dict[str, dict[str, Any]] = {
    "unlearnable+t[0,99]": {"objective": "unlearnable", "timesteps": "range", "t_min": 0, "t_max": 99},
    "unlearnable+t[100,399]": {"objective": "unlearnable", "timesteps": "range", "t_min": 100, "t_max": 399},
    "unlearnable+t[400,999]": {"objective": "unlearnable", "timesteps": "range", "t_min": 400, "t_max": 999},
    "matching+eudp": {"objective": "matching", "timesteps": "eudp"},
    "matching+eudp+pool3": {"objective": "matching", "timesteps": "eudp", "fit_pool": 3},
    "unlearnable+eudp+pool3": {"objective": "unlearnable", "timesteps": "eudp", "fit_pool": 3},
    "unlearnable+eudp+clusters16": {"objective": "unlearnable", "timesteps": "eudp", "clusters": 16,
                                    "fit_rounds": 24},
}
REFERENCE = {"unlearnable+eudp": {"objective": "unlearnable", "timesteps": "eudp"}}


def run_switches(out: str | Path, settings: EvalSettings, count: int = 1200, size: int = 16,
                 switches: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Protect with each switch, train one victim per protected set, write switches.json / switches_table.md."""
    switches = SWITCHES if switches is None else switches
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    clean, train_idx, train, holdout = bundled_split(count, size, settings.seed)
    protected: dict[str, list[np.ndarray]] = {"random-noise": random_noise(train, BASE.budget_levels)}
    seconds: dict[str, float] = {}
    for name, changes in {**REFERENCE, **switches}.items():
        t0 = time.perf_counter()
        full = cached_protect(name, clean, BASE.replace(**changes), out)
        seconds[name] = round(time.perf_counter() - t0, 1)
        protected[name] = [full[i] for i in train_idx]
    result_victims = run_victims({"clean": train, **protected}, holdout, train, out, settings)
    victims = result_victims["victims"]
    side_by_side_grids({"held-out real": np.stack(holdout),
                        **{f"victim: {k}": v for k, v in result_victims["samples"].items()}},
                       out / "switches_samples.png", rows=4, cols=4, cell=32)
    result = {"settings": settings.to_dict(), "base_config": BASE.to_dict(), "switches": switches,
              "victims": victims, "perturbation": {k: perturbation_cost(train, v) for k, v in protected.items()},
              "protect_seconds": seconds, "seconds": round(time.perf_counter() - start, 1)}
    (out / "switches.json").write_text(json.dumps(result, indent=2))
    table = results_table({k: v for k, v in victims.items() if k != "reference"})
    (out / "switches_table.md").write_text(table + "\n")
    return result
