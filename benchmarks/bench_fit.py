"""Fit cost: where the demo's fit time goes, how it scales, and which cheaper schedules keep the effect.

    python benchmarks/bench_fit.py              # ~40 minutes on 2 shared CPU cores, 1 torch thread
    python benchmarks/bench_fit.py --quick      # fewer schedules, shorter victims (~12 minutes)

1. **Breakdown** of ``udp-datasets demo``'s fit (its config, its 48 images: RGB photo crops 64 px and
   grey faces 25 px): seconds per round in surrogate training, PGD on the fit images and the
   evaluation of the perturbed loss, the cost per image pass of each, and the transform that follows
   (the same images, 40 steps), so the fit's share of the run is measured, not guessed.
2. **Scaling** with the number of fit images (one round each): training is a fixed number of
   optimizer steps, the PGD round touches every fit image, so at the defaults (10 rounds x 10 PGD
   steps, ``fit_max_samples`` 10,000) the fit's PGD grows linearly with the data.
3. **Schedules at equal effect**: cheaper fits (fewer rounds, fewer surrogate steps) against the
   demo's, each followed by the same transform, judged by two proxies measurable on a CPU:
   - *surrogate gap*: the fitted surrogate's denoising loss on the clean images minus on their
     protected versions (fixed timesteps and noise; min-min makes the protected ones *easier*);
   - *victim effect*: a fresh victim UNet (another architecture, seeded) trained on the protected
     images, then scored on the clean originals: its loss over that of the same victim trained on
     the clean images (> 1: the protected images taught it less). Controls: uniform random noise of
     the same budget, and a second clean victim seed (the noise floor of this proxy).
4. **Latent fit**: seconds per round with the VAE latents encoded once per round (``LatentCache``)
   against once per training step, on the shipped TAEF2 encoder.
5. **``fit_pgd_scope`` at scale** (more fit images than a round's training draws): PGD on every fit
   image each round against only the next round's draws, judged by the same two proxies.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, machine_end, result_header, write_result  # noqa: E402
SECTIONS = ("breakdown", "scaling", "schedules", "scope", "latent")


def demo_images() -> list[np.ndarray]:
    """What ``udp-datasets demo`` fits on: 32 RGB photo crops (64 px) and 16 grey faces (25 px)."""
    from udp_datasets.sources.bundled import faces, photo_crops

    return photo_crops(64, per_photo=4) + faces(16)


# ------------------------------------------------------------------ 1. timing each phase of fit
@contextlib.contextmanager
def phase_timer() -> Iterator[dict[str, float]]:
    """Time fit's phases by wrapping its functions (no change to the package)."""
    from udp_datasets.method import fit as fit_module
    from udp_datasets.method.objectives import ProtectionObjective

    totals = {"train": 0.0, "pgd_and_eval": 0.0, "eval": 0.0}
    originals = (fit_module._train_steps, fit_module._pgd_round, ProtectionObjective.evaluate)

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                totals[name] += time.perf_counter() - t0
        return wrapper

    fit_module._train_steps = timed("train", originals[0])
    fit_module._pgd_round = timed("pgd_and_eval", originals[1])
    ProtectionObjective.evaluate = timed("eval", originals[2])
    try:
        yield totals
    finally:
        fit_module._train_steps, fit_module._pgd_round, ProtectionObjective.evaluate = originals


def fit_and_protect(config, images: list[np.ndarray], folder: Path) -> dict[str, Any]:
    """Fit (timed per phase), then protect the same images with the fitted surrogate (timed)."""
    from udp_datasets import Protector

    protector = Protector(config, progress=False)
    t0 = time.perf_counter()
    with phase_timer() as phases:
        result = protector.fit(images, output_dir=folder)
    fit_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = protector.protect_images(images, keys=[f"img{i}" for i in range(len(images))])
    protect_seconds = time.perf_counter() - t0
    from udp_datasets.images import decode_png_pixels

    protected = [decode_png_pixels(r.png) for r in out]
    return {"protector": protector, "protected": protected, "history": result.history,
            "fit_seconds": fit_seconds, "protect_seconds": protect_seconds, "phases": dict(phases)}


def breakdown(config, images: list[np.ndarray], work: Path) -> dict[str, Any]:
    run = fit_and_protect(config, images, work / "demo-fit")
    ph, rounds, n = run["phases"], config.fit_rounds, len(images)
    pgd = ph["pgd_and_eval"] - ph["eval"]
    train_passes = rounds * config.fit_surrogate_steps * min(config.fit_batch_size, n)
    pgd_steps = rounds * config.fit_pgd_steps * n
    transform_steps = config.steps * n
    return {
        "images": n, "config": {k: getattr(config, k) for k in ("fit_rounds", "fit_surrogate_steps", "fit_pgd_steps",
                                                                 "fit_batch_size", "steps", "batch_size")},
        "fit_seconds": round(run["fit_seconds"], 1), "protect_seconds": round(run["protect_seconds"], 1),
        "fit_share_of_run": round(run["fit_seconds"] / (run["fit_seconds"] + run["protect_seconds"]), 3),
        "per_round_seconds": {"train": round(ph["train"] / rounds, 2), "pgd": round(pgd / rounds, 2),
                              "eval": round(ph["eval"] / rounds, 2)},
        "share_of_fit": {"train": round(ph["train"] / run["fit_seconds"], 3),
                         "pgd": round(pgd / run["fit_seconds"], 3), "eval": round(ph["eval"] / run["fit_seconds"], 3)},
        "image_passes": {"train_with_weight_gradients": train_passes, "fit_pgd_steps": pgd_steps,
                         "transform_pgd_steps": transform_steps},
        "ms_per_pass": {"train": round(1000 * ph["train"] / train_passes, 2),
                        "fit_pgd": round(1000 * pgd / pgd_steps, 2),
                        "transform_pgd": round(1000 * run["protect_seconds"] / transform_steps, 2)},
        "history": run["history"]}


# ------------------------------------------------------------------ 2. scaling with the data
def scaling(config, sizes: tuple[int, ...], work: Path) -> dict[str, Any]:
    from udp_datasets.sources.bundled import photo_patches

    rows = {}
    for n in sizes:
        images = photo_patches(16, count=n, seed=1)  # 16x16 real patches, like the 1,500-image report
        cfg = config.replace(fit_rounds=1)
        run = fit_and_protect(cfg.replace(steps=1), images, work / f"scale-{n}")
        ph = run["phases"]
        rows[str(n)] = {"train_seconds": round(ph["train"], 2), "pgd_seconds": round(ph["pgd_and_eval"] - ph["eval"], 2),
                        "eval_seconds": round(ph["eval"], 2)}
    largest = rows[str(max(sizes))]
    per_image_pgd = (largest["pgd_seconds"] + largest["eval_seconds"]) / max(sizes)
    train_round = statistics.median(r["train_seconds"] for r in rows.values())
    return {"per_round": rows, "pgd_plus_eval_seconds_per_image_per_round": round(per_image_pgd, 4),
            "train_seconds_per_round": round(train_round, 2),
            "estimate_defaults_1500_images": {
                "seconds_per_round": round(train_round + 1500 * per_image_pgd, 1),
                "minutes_10_rounds": round(10 * (train_round + 1500 * per_image_pgd) / 60, 1),
                "pgd_share": round(1500 * per_image_pgd / (train_round + 1500 * per_image_pgd), 3)}}


# ------------------------------------------------------------------ 3. effect proxies
def surrogate_gap(protector, clean: list[np.ndarray], protected: list[np.ndarray], draws: int = 8) -> float:
    """Fitted surrogate's mean denoising loss on the clean images minus on the protected ones (uniform t,
    the same noise and t for both)."""
    import torch

    surrogate = protector.prepare_surrogate()
    size, channels = surrogate.image_size, surrogate.image_channels
    from udp_datasets.method.fit import images_to_tensor

    losses = []
    for imgs in (clean, protected):
        x0 = surrogate.to_model_space(images_to_tensor(imgs, size, channels))
        g = torch.Generator().manual_seed(4321)  # the same draws for both sets
        total = torch.zeros(x0.shape[0])
        with torch.no_grad():
            for _ in range(draws):
                t = torch.randint(0, surrogate.alphas_cumprod.numel(), (x0.shape[0],), generator=g)
                noise = torch.randn(x0.shape, generator=g)
                total += surrogate.denoising_loss(x0, noise, t)
        losses.append(float(total.mean() / draws))
    return round(losses[0] - losses[1], 6)


def victim_loss(train: list[np.ndarray], scored: list[np.ndarray], steps: int, seed: int) -> float:
    """Train a fresh victim DDPM (victim-tiny, 32 px) on ``train``; its mean loss on ``scored`` (fixed draws)."""
    import torch

    from udp_datasets.evaluate.victims.pixel import VictimConfig, build_victim, to_training_tensor

    model = build_victim(VictimConfig(resolution=32, seed=seed), channels=3)
    data = to_training_tensor([np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in train], 32)
    abar = torch.linspace(1e-4, 0.02, 1000).neg().add(1).cumprod(0)  # DDPM linear schedule
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x0 = data[torch.randperm(data.shape[0], generator=gen)[:16]]
        loss = _ddpm_loss(model, x0, abar, gen).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    target = to_training_tensor([np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in scored], 32)
    g = torch.Generator().manual_seed(777)
    with torch.no_grad():
        return float(torch.stack([_ddpm_loss(model, target, abar, g) for _ in range(8)]).mean())


def _ddpm_loss(model, x0, abar, gen):
    import torch

    t = torch.randint(0, abar.numel(), (x0.shape[0],), generator=gen)
    noise = torch.randn(x0.shape, generator=gen)
    a = abar[t].view(-1, 1, 1, 1)
    return (model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample - noise).pow(2).flatten(1).mean(1)


def random_noise(images: list[np.ndarray], levels: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.clip(a.astype(np.int16) + rng.integers(-levels, levels + 1, a.shape), 0, 255).astype(np.uint8)
            for a in images]


def schedules(base, images: list[np.ndarray], variants: dict[str, dict], victim_steps: int, work: Path) -> dict:
    """Each fit schedule: fit seconds, surrogate gap, victim effect; plus the clean and random controls."""
    clean_loss = victim_loss(images, images, victim_steps, seed=0)
    out: dict[str, Any] = {"victim_steps": victim_steps, "victim_loss_clean_trained": round(clean_loss, 5)}
    second = victim_loss(images, images, victim_steps, seed=1)
    out["control_clean_second_seed"] = {"victim_effect_seed1_over_seed0": round(second / clean_loss, 4)}
    noisy = random_noise(images, base.budget_levels)
    out["control_random_noise"] = {"victim_effect": round(victim_loss(noisy, images, victim_steps, 0) / clean_loss, 4)}
    logging.info("schedule controls: %s", {k: v for k, v in out.items()})
    for name, changes in variants.items():
        config = base.replace(**changes)
        run = fit_and_protect(config, images, work / f"fit-{name}")
        out[name] = {"changes": changes, "fit_seconds": round(run["fit_seconds"], 1),
                     "protect_seconds": round(run["protect_seconds"], 1),
                     "surrogate_gap": surrogate_gap(run["protector"], images, run["protected"]),
                     "victim_effect": round(victim_loss(run["protected"], images, victim_steps, 0) / clean_loss, 4),
                     "final_record": run["history"][-1] if run["history"] else None}
        logging.info("schedule %s: %s", name, {k: v for k, v in out[name].items() if k != "final_record"})
    return out


# ------------------------------------------------------------------ 5. fit_pgd_scope at scale
def scope_at_scale(count: int, victim_steps: int, work: Path) -> dict[str, Any]:
    """More fit images than a round's training draws: PGD on all of them each round, or only on the next
    round's draws (``fit_pgd_scope='next_round'``); the same transform and proxies after each."""
    from udp_datasets import ProtectionConfig
    from udp_datasets.sources.bundled import photo_patches

    images = photo_patches(16, count=count, seed=2)  # real 16x16 patches, like the 1,500-image report
    base = ProtectionConfig(fit_rounds=4, fit_surrogate_steps=10, fit_batch_size=16, fit_pgd_steps=5, steps=20,
                            batch_size=32, device="cpu")
    clean_loss = victim_loss(images, images, victim_steps, seed=0)
    out: dict[str, Any] = {"images": count, "config": {k: getattr(base, k) for k in (
        "fit_rounds", "fit_surrogate_steps", "fit_batch_size", "fit_pgd_steps", "steps")},
        "draws_per_round": base.fit_surrogate_steps * base.fit_batch_size,
        "victim_effect_second_clean_seed": round(victim_loss(images, images, victim_steps, 1) / clean_loss, 4)}
    for scope in ("all", "next_round"):
        run = fit_and_protect(base.replace(fit_pgd_scope=scope), images, work / f"scope-{scope}")
        ph = run["phases"]
        out[scope] = {"fit_seconds": round(run["fit_seconds"], 1), "pgd_seconds": round(ph["pgd_and_eval"], 1),
                      "train_seconds": round(ph["train"], 1),
                      "surrogate_gap": surrogate_gap(run["protector"], images, run["protected"]),
                      "victim_effect": round(victim_loss(run["protected"], images, victim_steps, 0) / clean_loss, 4)}
        logging.info("scope %s: %s", scope, out[scope])
    out["fit_speedup"] = round(out["all"]["fit_seconds"] / out["next_round"]["fit_seconds"], 2)
    return out


# ------------------------------------------------------------------ 4. latent fit: encode once per round
def latent_cache(work: Path, size: int, count: int, repeats: int) -> dict[str, Any]:
    """One fit round of a TAEF2 latent pair with the latent cache and without it (paired)."""
    import torch
    from diffusers import UNet2DModel

    from udp_datasets import ProtectionConfig, Protector
    from udp_datasets.method import fit as fit_module
    from udp_datasets.models.latent import save_latent_pair
    from udp_datasets.models.tiny_autoencoder import bundled_taef2
    from udp_datasets.sources.bundled import photo_crops

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=size // 8, in_channels=32, out_channels=32, block_out_channels=(64, 128),
                           layers_per_block=1, norm_num_groups=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    save_latent_pair(work / "latent", bundled_taef2(), unet)
    images = photo_crops(size, per_photo=2)[:count]
    config = ProtectionConfig(surrogate=str(work / "latent"), objective="adversarial", fit_rounds=1,
                              fit_surrogate_steps=10, fit_batch_size=8, device="cpu")
    original = fit_module.LatentCache
    seconds: dict[str, list[float]] = {"cached": [], "per_step": []}
    weights = {}
    for _ in range(repeats):
        for arm in ("per_step", "cached"):
            fit_module.LatentCache = original if arm == "cached" else (lambda surrogate, data: None)
            try:
                protector = Protector(config, progress=False)
                t0 = time.perf_counter()
                protector.fit(images, output_dir=work / f"latent-{arm}")
                seconds[arm].append(time.perf_counter() - t0)
                weights[arm] = {k: v.clone() for k, v in protector.prepare_surrogate().unet.state_dict().items()}
            finally:
                fit_module.LatentCache = original
    ratios = [p / c for p, c in zip(seconds["per_step"], seconds["cached"])]
    return {"images": count, "image_size": size, "surrogate_steps": 10, "batch": 8,
            "encoder_passes_per_round": {"per_step": 10 * 8, "cached_at_most": count},
            "seconds": {k: [round(v, 2) for v in vs] for k, vs in seconds.items()},
            "median_speedup": round(statistics.median(ratios), 3),
            "max_abs_weight_difference": float(max((weights["cached"][k] - weights["per_step"][k]).abs().max()
                                                   for k in weights["cached"]))}


# ------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS / "fit_cpu.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--victim-steps", type=int, default=150)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                        help="run only these; their results replace the same keys in an existing --out file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from udp_datasets.cli.demo import PIXEL_FIT_CONFIG

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="udp-bench-fit-"))
    t0 = time.perf_counter()
    # the schedule the demo had when these measurements were made (0.1: 8 rounds x 40 steps); the
    # demo now uses the cheaper rounds_4_steps_20 they justified
    base = PIXEL_FIT_CONFIG.replace(device="cpu", fit_rounds=8, fit_surrogate_steps=40)
    images = demo_images()
    result = result_header("fit: cost per round and per image, scaling, cheaper schedules at equal measured effect, "
                           "latent cache", __file__, argv, args.threads)
    wanted = set(args.sections)

    def checkpoint() -> None:  # a crash or a kill keeps the sections done so far
        Path(args.out + ".partial").write_text(json.dumps(result, indent=2, default=str) + "\n")

    if "breakdown" in wanted:
        result["demo_breakdown"] = breakdown(base, images, work)
        logging.info("breakdown: %s", {k: v for k, v in result["demo_breakdown"].items() if k != "history"})
        checkpoint()
    from udp_datasets import ProtectionConfig

    if "scaling" in wanted:
        result["scaling_defaults"] = scaling(ProtectionConfig(device="cpu"),
                                             (32, 128) if args.quick else (32, 128, 256), work)
        logging.info("scaling: %s", result["scaling_defaults"])
        checkpoint()
    variants = {"demo": {}, "rounds_4": {"fit_rounds": 4}, "steps_20": {"fit_surrogate_steps": 20},
                "rounds_4_steps_20": {"fit_rounds": 4, "fit_surrogate_steps": 20}, "rounds_2": {"fit_rounds": 2},
                "no_fit_rounds": {"fit_rounds": 0}}
    if args.quick:
        variants = {k: variants[k] for k in ("demo", "rounds_4_steps_20", "no_fit_rounds")}
    if "schedules" in wanted:
        result["schedules"] = schedules(base, images, variants, 60 if args.quick else args.victim_steps, work)
        checkpoint()
    if "scope" in wanted:
        result["fit_pgd_scope_at_scale"] = scope_at_scale(128 if args.quick else 256,
                                                          60 if args.quick else args.victim_steps, work)
        checkpoint()
    if "latent" in wanted:
        result["latent_fit_cache"] = latent_cache(work, 64, 16, 1 if args.quick else 2)
    machine_end(result["machine"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if set(args.sections) != set(SECTIONS) and Path(args.out).exists():  # merge a partial run into the last one
        previous = json.loads(Path(args.out).read_text())
        previous.setdefault("partial_runs", []).append({"sections": args.sections, "machine": result["machine"],
                                                        "seconds": result["seconds"]})
        result = previous | {k: v for k, v in result.items() if k not in ("machine", "seconds", "command")}
    write_result(result, args.out)
    Path(args.out + ".partial").unlink(missing_ok=True)  # the checkpoint of a run that has now finished
    return result


if __name__ == "__main__":
    main()
