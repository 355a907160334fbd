"""Protection speed: the way the peers do it against our Protector, side by side, and each speed switch.

    python benchmarks/bench_protect.py                      # CPU, ~25 minutes on 2 shared cores
    python benchmarks/bench_protect.py --quick              # CPU, fewer repeats and arms (~6 minutes)
    python benchmarks/bench_protect.py --profile            # CPU: torch.profiler + FLOP count of one PGD step
    python benchmarks/bench_protect.py --device cuda        # GPU: SD-shaped latent surrogate, 256 and 512 px

1. **Naive vs Protector**, in one process, on the same surrogate, images and step count. The naive
   arm is written the way Mist, Anti-DreamBooth, PhotoGuard and Diff-Protect run: one image at a
   time, float32, a fresh autograd graph per step, ``loss.backward()`` with the parameters'
   gradients left on (zeroed every step), no batching. The Protector runs with its defaults
   (the ``auto`` switches for this device). Arms alternate in paired repeats (naive, Protector,
   naive, ...), so load from other processes hits both alike; the median of the per-pair ratios is
   reported. Two surrogates: the built-in pixel UNet (``tiny``, working size 32, fitted briefly on
   the images) and a latent pair whose VAE is the shipped, pretrained TAEF2 encoder with a small
   UNet2DModel on its 32-channel latents.
2. **Each switch alone** (``Protector(tuning={...})``), each run right after the defaults, in adjacent
   pairs: freeze, reuse_buffers, overlap, sdpa, and every precision / layout pair (float32 or bf16
   autocast, contiguous or channels_last) but the defaults' own; torch.compile (with its compile
   time); ``mixed_shapes`` on a folder of images of all different sizes; the ``datasets.map`` path's
   share of decoding and PNG encoding; peak memory of each arm in a fresh process, and per image
   pixel (one large image), which sets ``BYTES_PER_PIXEL`` of ``batch_pixels=0``.
3. **Agreement**: each arm's outputs against the float32 reference: fraction of identical output
   pixel values, and the change of the surrogate loss from clean to protected (same sign wanted).

GPU mode: a Stable-Diffusion-shaped latent surrogate built from configs with random weights (SD 1.5
UNet2DConditionModel + SD AutoencoderKL; nothing downloaded), naive vs Protector at 256 and 512 px,
peak GPU memory at batch 1 and at the best batch size.
"""

from __future__ import annotations

import argparse
import logging
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, machine_end, result_header, write_result  # noqa: E402


# ------------------------------------------------------------------ memory
def rss_mib() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak() -> float:
    """Reset the peak-RSS mark (Linux clear_refs 5) and the GPU's; returns the current RSS."""
    import torch

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    return rss_mib()[0]


def measured(fn: Callable[[], Any], n_images: int) -> dict[str, Any]:
    """Run ``fn`` once: images/s, and peak memory over what was resident before it."""
    import torch

    start_rss = reset_peak()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    row = {"images_per_s": n_images / seconds, "seconds": seconds,
           "peak_rss_over_start_mib": rss_mib()[1] - start_rss}
    if torch.cuda.is_available():
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    return {"row": row, "out": out}


# ------------------------------------------------------------------ the naive arm
def naive_protect(surrogate, images: list[np.ndarray], steps: int, epsilon: float, alpha: float,
                  cond=None) -> list[np.ndarray]:
    """One image at a time, fp32, parameters' gradients on, ``loss.backward()``: how the peers run PGD."""
    import torch
    import torch.nn.functional as F

    device = surrogate.device
    nets = [surrogate.unet] + ([surrogate.vae] if getattr(surrogate, "vae", None) is not None else [])
    for net in nets:
        net.requires_grad_(True)
    abar = surrogate.alphas_cumprod.to(device)
    out = []
    for arr in images:
        x = torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).float().div(255)[None].to(device)
        x_adv = x.clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            z = surrogate.to_model_space(x_adv)  # resize (pixel) or scaled VAE latents (latent)
            t = torch.randint(0, abar.numel(), (1,), device=device)
            noise = torch.randn_like(z)
            a = abar[t].view(-1, 1, 1, 1)
            kwargs = {} if cond is None else {"encoder_hidden_states": cond}
            pred = surrogate.unet(a.sqrt() * z + (1 - a).sqrt() * noise, t, **kwargs).sample
            loss = F.mse_loss(pred, noise)
            for net in nets:
                net.zero_grad()
            loss.backward()
            with torch.no_grad():
                x_adv = x_adv + alpha * x_adv.grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - epsilon), x + epsilon).clamp(0, 1)
        out.append(x_adv.detach()[0].permute(1, 2, 0).cpu().numpy())
    for net in nets:
        net.requires_grad_(False)
    return out


# ------------------------------------------------------------------ surrogates and images
def bench_images(size: int, count: int) -> list[np.ndarray]:
    from udp_datasets.sources.bundled import faces_rgb, photo_crops

    imgs = photo_crops(size, per_photo=2) + faces_rgb(size, count=count)
    return imgs[:count]


def mixed_size_images(count: int) -> list[np.ndarray]:
    """Real photo crops of ``count`` different sizes (40..70 px, non-square): a typical image folder."""
    from udp_datasets.sources.bundled import photo_crops

    base = photo_crops(96, per_photo=2)
    return [np.ascontiguousarray(base[i % len(base)][:40 + (2 * i) % 31, :44 + (3 * i) % 27]) for i in range(count)]


def pixel_surrogate(work: Path, images: list[np.ndarray]) -> str:
    """The built-in tiny pixel UNet (working size 32), trained briefly on the clean images."""
    from udp_datasets import ProtectionConfig, Protector

    config = ProtectionConfig(objective="adversarial", fit_rounds=1, fit_surrogate_steps=30, fit_batch_size=16,
                              device="cpu")
    protector = Protector(config, progress=False)
    protector.fit(images, output_dir=work / "pixel")
    return str(work / "pixel")


def latent_surrogate(work: Path, image_size: int) -> str:
    """The shipped TAEF2 autoencoder + a small UNet2DModel on its 32-channel latents (random init)."""
    import torch
    from diffusers import UNet2DModel

    from udp_datasets.models.latent import save_latent_pair
    from udp_datasets.models.tiny_autoencoder import bundled_taef2

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(sample_size=image_size // 8, in_channels=32, out_channels=32,
                           block_out_channels=(64, 128), layers_per_block=1, norm_num_groups=8,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))
    save_latent_pair(work / "latent", bundled_taef2(), unet)
    return str(work / "latent")


# ------------------------------------------------------------------ agreement
def to_uint8(images: list[np.ndarray]) -> list[np.ndarray]:
    return [np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8) for a in images]


def outputs_of(results) -> list[np.ndarray]:
    from udp_datasets.images import decode_png_pixels

    return [decode_png_pixels(r.png) for r in results]


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    same = sum(int((x == y).sum()) for x, y in zip(a, b))
    return round(same / sum(x.size for x in a), 4)


def loss_change(protector, clean: list[np.ndarray], protected: list[np.ndarray]) -> float:
    """Mean change of the surrogate's own loss, clean -> protected, with fixed per-image draws."""
    import torch

    from udp_datasets.method.pgd import sample_generator

    surrogate = protector.prepare_surrogate()
    objective = protector.engine.objective
    changes = []
    for i, (c, p) in enumerate(zip(clean, protected)):
        x = torch.from_numpy(np.stack([c])).permute(0, 3, 1, 2).float().div(255).to(surrogate.device)
        y = torch.from_numpy(np.stack([p])).permute(0, 3, 1, 2).float().div(255).to(surrogate.device)
        gens = lambda: [sample_generator(1234, f"eval{i}")]  # noqa: E731 - same draws for both
        changes.append(float(objective.evaluate(y, gens(), repeats=8, clean=x)
                             - objective.evaluate(x, gens(), repeats=8, clean=x)))
    return round(float(np.mean(changes)), 6)


# ------------------------------------------------------------------ paired arms
def paired(arms: dict[str, Callable[[], Any]], n_images: int, repeats: int) -> dict[str, dict]:
    """Run the arms in turn, ``repeats`` times (A B C A B C ...); images/s and memory per run."""
    runs: dict[str, list[dict]] = {name: [] for name in arms}
    outs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, fn in arms.items():
            m = measured(fn, n_images)
            runs[name].append(m["row"])
            outs[name] = m["out"]
    return {name: {"runs": rows, "out": outs[name]} for name, rows in runs.items()}


def summarise(runs: dict[str, dict], base: str) -> dict[str, dict]:
    """Per arm: median images/s, median of the per-pair ratios to ``base``, peak memory."""
    out = {}
    for name, r in runs.items():
        ips = [row["images_per_s"] for row in r["runs"]]
        ratios = [row["images_per_s"] / b["images_per_s"] for row, b in zip(r["runs"], runs[base]["runs"])]
        out[name] = {"images_per_s": [round(v, 3) for v in ips], "median_images_per_s": round(statistics.median(ips), 3),
                     f"ratio_to_{base}_per_pair": [round(v, 3) for v in ratios],
                     f"median_ratio_to_{base}": round(statistics.median(ratios), 3)}
        if "peak_gpu_mib" in r["runs"][0]:
            out[name]["peak_gpu_mib"] = round(max(row["peak_gpu_mib"] for row in r["runs"]), 1)
    return out


# ------------------------------------------------------------------ peak memory, one fresh process per arm
def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In this fresh process: load, reset the peak mark, run one arm once; its peak RSS over the start."""
    from udp_datasets import ProtectionConfig
    from udp_datasets.models import load_surrogate
    from udp_datasets.method.budget import Budget

    config = ProtectionConfig.from_json(spec["config"])
    if spec.get("side"):
        from PIL import Image

        from udp_datasets.sources.bundled import photo

        images = [np.asarray(Image.fromarray(photo("astronaut")).resize((spec["side"], spec["side"])))]
    else:
        images = bench_images(spec["size"], spec["count"])
    if spec["arm"] == "naive":
        surrogate = load_surrogate(config=config)
        fn = lambda: naive_protect(surrogate, images, config.steps, Budget.of(config).epsilon,  # noqa: E731
                                   config.step_size)
    else:
        protector = protector_for(config, spec.get("tuning"))
        fn = lambda: protector.protect_images(images)  # noqa: E731
    row = measured(fn, len(images))["row"]
    return {"peak_rss_over_start_mib": round(row["peak_rss_over_start_mib"], 1), "images": len(images),
            "pixels": int(sum(a.shape[0] * a.shape[1] for a in images))}


def memory_child_run(script: str, spec: dict[str, Any], threads: int) -> dict[str, Any]:
    """``python SCRIPT --memory-child SPEC`` in a fresh process at ``threads`` threads: the JSON it prints last."""
    proc = subprocess.run([sys.executable, script, "--memory-child", json.dumps(spec), "--threads", str(threads)],
                          capture_output=True, text=True, timeout=1800, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_of(arms: dict[str, dict], config, size: int, count: int, threads: int) -> dict[str, Any]:
    """Peak working memory of each arm, each in a fresh process (freed memory stays mapped in this one)."""
    out = {}
    for name, spec in arms.items():
        spec = {"config": config.to_json(indent=None), "size": size, "count": count, **spec}
        out[name] = memory_child_run(__file__, spec, threads)
        if spec.get("side"):
            out[name]["bytes_per_pixel"] = round(out[name]["peak_rss_over_start_mib"] * 2 ** 20 / out[name]["pixels"])
    return out


# ------------------------------------------------------------------ one surrogate, all arms (CPU)
def protector_for(config, tuning: dict | None = None, surrogate=None):
    from udp_datasets import Protector

    p = Protector(config, progress=False, tuning=tuning, surrogate=surrogate)
    p.prepare_surrogate()  # load and place outside the timed region, as for the naive arm
    return p


def compare(config, images: list[np.ndarray], repeats: int, ablations: dict[str, dict], ablation_repeats: int,
            surrogate=None, cond=None) -> dict[str, Any]:
    """Naive vs the Protector's defaults, then each switch against the defaults; all in adjacent pairs."""
    from udp_datasets.models import load_surrogate
    from udp_datasets.method.budget import Budget

    copy = (lambda: __import__("copy").deepcopy(surrogate)) if surrogate is not None else (lambda: None)
    defaults = protector_for(config, surrogate=copy())
    naive_sur = copy() or load_surrogate(config=config)
    naive_sur.to(defaults.prepare_surrogate().device)
    eps, alpha = Budget.of(config).epsilon, config.step_size
    keys = [f"img{i}" for i in range(len(images))]
    main = paired({"naive": lambda: to_uint8(naive_protect(naive_sur, images, config.steps, eps, alpha, cond)),
                   "protector_defaults": lambda: defaults.protect_images(images, keys=keys)}, len(images), repeats)
    side = {}
    for name, tuning in ablations.items():  # each switch right after the defaults: adjacent pairs
        p = protector_for(config, tuning, surrogate=copy())
        pair = paired({"protector_defaults": lambda: defaults.protect_images(images, keys=keys),
                       name: lambda p=p: p.protect_images(images, keys=keys)}, len(images), ablation_repeats)
        side[name] = summarise(pair, "protector_defaults")[name] | {"out": pair[name]["out"]}
    reference = outputs_of(main["protector_defaults"]["out"])
    quality = {"naive": {"loss_change": loss_change(defaults, images, main["naive"]["out"])}}
    for name, r in list(main.items())[1:] + list(side.items()):
        got = outputs_of(r["out"])
        quality[name] = {"pixel_agreement_with_defaults": agreement(reference, got),
                         "loss_change": loss_change(defaults, images, got)}
    return {"naive_vs_protector": summarise(main, "naive"),
            "switches_vs_defaults": {k: {f: v for f, v in r.items() if f != "out"} for k, r in side.items()},
            "effect": quality, "defaults_in_force": vars(defaults.tuning)}


def compile_cost(config, images: list[np.ndarray]) -> dict[str, Any]:
    """torch.compile: time of the first call (compilation included) and steady speed against eager."""
    eager = protector_for(config)
    compiled = protector_for(config, {"compile": True})
    first = measured(lambda: compiled.protect_images(images), len(images))["row"]
    rows = paired({"eager": lambda: eager.protect_images(images),
                   "compiled": lambda: compiled.protect_images(images)}, len(images), 2)
    summary = summarise(rows, "eager")
    return {"first_call_seconds_with_compilation": round(first["seconds"], 1),
            "eager_seconds_per_call": round(statistics.median(r["seconds"] for r in rows["eager"]["runs"]), 2),
            "steady": summary,
            "pixel_agreement": agreement(outputs_of(rows["eager"]["out"]), outputs_of(rows["compiled"]["out"]))}


def mixed_sizes(config, count: int, repeats: int) -> dict[str, Any]:
    """A folder of images of all different sizes: shared batches (mixed_shapes) vs one batch per shape."""
    images = mixed_size_images(count)
    on, off = protector_for(config), protector_for(config, {"mixed_shapes": False})
    rows = paired({"mixed_shapes_off": lambda: off.protect_images(images),
                   "mixed_shapes_on": lambda: on.protect_images(images)}, len(images), repeats)
    return {"images": count, "distinct_shapes": len({a.shape for a in images}), **summarise(rows, "mixed_shapes_off"),
            "pixel_agreement": agreement(outputs_of(rows["mixed_shapes_off"]["out"]),
                                         outputs_of(rows["mixed_shapes_on"]["out"]))}


def map_path(config, images: list[np.ndarray]) -> dict[str, Any]:
    """What the datasets.map path spends outside PGD: decoding the inputs and 8-bit rounding + PNG encoding."""
    import datasets
    from PIL import Image

    from udp_datasets.images import encode_png, load_image
    from udp_datasets.method.budget import Budget

    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in images]}).cast_column("image", datasets.Image())
    protector = protector_for(config)
    t0 = time.perf_counter()
    ds.map(protector, batched=True, batch_size=config.batch_size, keep_in_memory=True, load_from_cache_file=False)
    map_seconds = time.perf_counter() - t0
    raw = ds.cast_column("image", datasets.Image(decode=False))["image"]
    t0 = time.perf_counter()
    decoded = [load_image(v) for v in raw]
    decode_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    for d in decoded:
        encode_png(Budget.of(config).quantize(d.pixels, d.pixels / 255.0), d.alpha, d.icc_profile)
    encode_seconds = time.perf_counter() - t0
    return {"images": len(images), "map_seconds": round(map_seconds, 2), "decode_seconds": round(decode_seconds, 3),
            "round_and_png_seconds": round(encode_seconds, 3),
            "share_outside_pgd": round((decode_seconds + encode_seconds) / map_seconds, 4)}


# ------------------------------------------------------------------ profile of one PGD step (CPU)
def profile_step(config, images: list[np.ndarray], label: str) -> dict[str, Any]:
    """torch.profiler over one PGD step of a batch, the FLOPs it does, and the GFLOP/s reached."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    from udp_datasets.method.pgd import sample_generator
    from udp_datasets.models.runtime import autocast

    protector = protector_for(config)
    surrogate = protector.prepare_surrogate()
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    gens = [sample_generator(0, f"p{i}") for i in range(len(images))]
    fn = protector.engine.objective.loss_fn(gens, x)

    def step() -> None:
        with autocast(surrogate.device, protector.tuning):
            delta = torch.zeros_like(x).requires_grad_(True)
            torch.autograd.grad(fn(x + delta, 0).sum(), delta)

    step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times, matmul = [], []
    for _ in range(7):  # interleaved with the reference matmul, so both see the same load
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        matmul.append(matmul_gflops(torch.bfloat16 if protector.tuning.autocast == "bfloat16" else torch.float32))
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=48)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    top = [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1000, 1),
            "share": round(e.self_cpu_time_total / total, 3), "calls": e.count}
           for e in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:10]]
    seconds = statistics.median(times)
    reference = statistics.median(matmul)
    return {"label": label, "batch": len(images), "image_size": list(images[0].shape), "surrogate": surrogate.kind,
            "tuning": {"autocast": protector.tuning.autocast, "channels_last": protector.tuning.channels_last},
            "step_seconds_median": round(seconds, 4), "gflop_per_step": round(flops / 1e9, 3),
            "gflop_per_s": round(flops / seconds / 1e9, 1), "matmul_gflop_per_s_same_dtype": round(reference, 1),
            "share_of_matmul": round(flops / seconds / 1e9 / reference, 3), "top_ops": top, "table": table,
            "flops_by_module": {k: round(v / 1e9, 3) for k, v in sorted(
                ((k, sum(d.values())) for k, d in counter.get_flop_counts().items() if k.count(".") <= 1),
                key=lambda kv: -kv[1])[:8]}}


def matmul_gflops(dtype, n: int = 1024, repeats: int = 5) -> float:
    """GFLOP/s of a plain n x n matmul in ``dtype`` on this machine (median of ``repeats``): the
    physical-limit reference for what a convolution-heavy step could reach."""
    import torch

    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


# ------------------------------------------------------------------ CPU main
def cpu_main(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from udp_datasets import ProtectionConfig
    from udp_datasets.models.runtime import native_bf16_cpu

    precision = {"fp32_contiguous": {"autocast": "off", "channels_last": False},
                 "fp32_channels_last": {"autocast": "off", "channels_last": True}}
    if native_bf16_cpu():
        precision |= {"bf16_contiguous": {"autocast": "bfloat16", "channels_last": False},
                      "bf16_channels_last": {"autocast": "bfloat16", "channels_last": True}}
    common = {"freeze_off": {"freeze": False}, "reuse_buffers_off": {"reuse_buffers": False},
              "overlap_off": {"overlap": False}, "sdpa_off": {"sdpa": False}}
    if args.quick:
        common = {"freeze_off": common["freeze_off"]}

    def ablations(config) -> dict[str, dict]:
        """The common switches, and every precision / layout pair but the one the defaults already use."""
        in_force = protector_for(config).tuning
        return common | {k: v for k, v in precision.items()
                         if (v["autocast"], v["channels_last"]) != (in_force.autocast, in_force.channels_last)}

    result: dict[str, Any] = {}
    px_images = bench_images(args.pixel_size, args.pixel_images)
    px_config = ProtectionConfig(surrogate=pixel_surrogate(work, px_images), objective="adversarial",
                                 steps=args.steps, batch_size=16, device="cpu")
    result["pixel"] = {"workload": {"images": len(px_images), "image_size": args.pixel_size, "steps": args.steps,
                                    "batch_size": 16, "surrogate": "built-in tiny UNet2DModel, working size 32",
                                    "objective": "adversarial"},
                       **compare(px_config, px_images, args.repeats, ablations(px_config), args.ablation_repeats)}
    logging.info("pixel done: %s", result["pixel"]["naive_vs_protector"])
    lat_images = bench_images(args.latent_size, args.latent_images)
    lat_config = ProtectionConfig(surrogate=latent_surrogate(work, args.latent_size), objective="adversarial",
                                  steps=args.latent_steps, batch_size=4, device="cpu")
    result["latent"] = {"workload": {"images": len(lat_images), "image_size": args.latent_size,
                                     "steps": args.latent_steps, "batch_size": 4, "objective": "adversarial",
                                     "surrogate": "TAEF2 encoder (shipped, pretrained) + UNet2DModel (64, 128) on "
                                                  f"32x{args.latent_size // 8}x{args.latent_size // 8} latents"},
                        **compare(lat_config, lat_images, args.repeats, ablations(lat_config),
                                  args.ablation_repeats)}
    logging.info("latent done: %s", result["latent"]["naive_vs_protector"])
    result["mixed_sizes_pixel"] = mixed_sizes(px_config, 32, args.ablation_repeats)
    result["datasets_map_pixel"] = map_path(px_config, px_images)
    for kind, config, size, count in (("pixel", px_config, args.pixel_size, len(px_images)),
                                      ("latent", lat_config, args.latent_size, len(lat_images))):
        result[kind]["peak_memory_fresh_process"] = memory_of(
            {"naive": {"arm": "naive"}, "protector_defaults": {"arm": "protector"},
             **{f"protector_{k}": {"arm": "protector", "tuning": v} for k, v in precision.items()}},
            config, size, count, args.threads)
    result["memory_per_pixel"] = memory_of(
        {f"{side}x{side}": {"arm": "protector", "side": side} for side in (1024, 2048)},
        px_config.replace(steps=1, batch_pixels=10 ** 9), 0, 0, args.threads)
    if args.compile:
        result["compile_pixel"] = compile_cost(px_config, px_images)
        if not args.quick:
            result["compile_latent"] = compile_cost(lat_config, lat_images)
    return result


def profile_main(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from udp_datasets import ProtectionConfig

    px_images = bench_images(args.pixel_size, 16)
    px_config = ProtectionConfig(surrogate=pixel_surrogate(work, px_images), objective="adversarial", device="cpu")
    lat_images = bench_images(args.latent_size, 4)
    lat_config = ProtectionConfig(surrogate=latent_surrogate(work, args.latent_size), objective="adversarial",
                                  device="cpu")
    fp32 = {"autocast": "off", "channels_last": "off"}
    bf16 = {"autocast": "bfloat16", "channels_last": "on"}
    return {"pixel_fp32": profile_step(px_config.replace(**fp32), px_images, "pixel, batch 16, float32 (default)"),
            "pixel_bf16": profile_step(px_config.replace(**bf16), px_images,
                                       "pixel, batch 16, bf16 autocast + channels_last"),
            "latent_fp32": profile_step(lat_config.replace(**fp32), lat_images, "latent, batch 4, float32"),
            "latent_bf16": profile_step(lat_config.replace(**bf16), lat_images,
                                        "latent, batch 4, bf16 autocast + channels_last (default on this CPU)")}


# ------------------------------------------------------------------ GPU: a Stable-Diffusion-shaped surrogate
def sd_surrogate(work: Path, resolution: int, small: bool = False):
    """SD 1.5's UNet2DConditionModel and SD's AutoencoderKL, built from their configs with random weights
    (enough for speed and memory; nothing is downloaded), and a 2-layer CLIP text encoder of width 768
    (the condition is computed once per prompt and cached, so its size does not matter). ``small``
    shrinks every width 8x: a smoke test of this code path on a CPU."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from udp_datasets.evaluate.tiny_models import build_tiny_text_encoder, save_tiny_clip_tokenizer
    from udp_datasets.models.base import SurrogateRef
    from udp_datasets.models.latent import LatentSurrogate, sd_scheduler

    k = 8 if small else 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(sample_size=resolution // 8, in_channels=4, out_channels=4, layers_per_block=2,
                                    block_out_channels=tuple(c // k for c in (320, 640, 1280, 1280)),
                                    norm_num_groups=32 // k, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                            block_out_channels=tuple(c // k for c in (128, 256, 512, 512)), norm_num_groups=32 // k,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=resolution, scaling_factor=0.18215)
    tokenizer = save_tiny_clip_tokenizer(work / f"tokenizer-{resolution}", max_length=77)
    text = build_tiny_text_encoder(len(tokenizer), hidden_size=768, max_length=77)
    return LatentSurrogate(unet, sd_scheduler(), SurrogateRef(kind="latent", source=None, architecture="sd15-config"),
                           vae, text, tokenizer)


def gpu_resolution(work: Path, resolution: int, args: argparse.Namespace) -> dict[str, Any]:
    """Naive vs Protector at one resolution; Protector's batch-size sweep with peak GPU memory."""
    import copy

    import torch

    from udp_datasets import ProtectionConfig
    from udp_datasets.method.budget import Budget

    device = args.device
    surrogate = sd_surrogate(work, resolution, small=args.smoke)
    config = ProtectionConfig(objective="adversarial", steps=args.gpu_steps, prompt="a photo of sks person",
                              device=device, batch_size=1)
    images = bench_images(resolution, max(args.gpu_batches))
    naive_images = images[:args.gpu_naive_images]
    naive_sur = copy.deepcopy(surrogate).to(torch.device(device))
    cond = naive_sur.encode_text(["a photo of sks person"])
    eps, alpha = Budget.of(config).epsilon, config.step_size
    naive = [measured(lambda: naive_protect(naive_sur, naive_images, config.steps, eps, alpha, cond),
                      len(naive_images))["row"] for _ in range(args.repeats)]
    naive_sur.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    sweep: dict[str, Any] = {}
    for precision in ("defaults", "fp32"):
        tuning = None if precision == "defaults" else {"autocast": "off", "channels_last": False}
        protector = protector_for(config, tuning, surrogate=copy.deepcopy(surrogate))
        for batch in args.gpu_batches:
            protector.config = protector.config.replace(batch_size=batch)
            try:
                rows = [measured(lambda: protector.protect_images(images[:batch] * max(1, 8 // batch)),
                                 batch * max(1, 8 // batch))["row"] for _ in range(args.repeats)]
            except torch.cuda.OutOfMemoryError:
                sweep[f"{precision}_batch{batch}"] = "out of memory"
                torch.cuda.empty_cache()
                break
            sweep[f"{precision}_batch{batch}"] = {
                "median_images_per_s": round(statistics.median(r["images_per_s"] for r in rows), 3),
                "peak_gpu_mib": round(max(r.get("peak_gpu_mib", 0.0) for r in rows), 1)}
        sweep[f"{precision}_tuning"] = vars(protector.tuning)
        protector.prepare_surrogate().to("cpu")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    naive_ips = statistics.median(r["images_per_s"] for r in naive)
    best = max((k for k, v in sweep.items() if isinstance(v, dict) and "median_images_per_s" in v),
               key=lambda k: sweep[k]["median_images_per_s"])
    return {"resolution": resolution, "steps": config.steps,
            "naive": {"median_images_per_s": round(naive_ips, 3),
                      "peak_gpu_mib": round(max(r.get("peak_gpu_mib", 0.0) for r in naive), 1)},
            "protector": sweep, "best": best,
            "ratio_best_to_naive": round(sweep[best]["median_images_per_s"] / naive_ips, 2),
            "ratio_defaults_batch1_to_naive": round(sweep["defaults_batch1"]["median_images_per_s"] / naive_ips, 2)
            if isinstance(sweep.get("defaults_batch1"), dict) else None}


def gpu_main(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    return {f"sd_{r}": gpu_resolution(work, r, args) for r in args.resolutions}


# ------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: the GPU mode")
    parser.add_argument("--profile", action="store_true", help="CPU: profile one PGD step and count its FLOPs")
    parser.add_argument("--out", help="JSON result (default: benchmarks/results/protect_<mode>.json)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: other jobs share the cores)")
    parser.add_argument("--repeats", type=int, default=5, help="paired repeats of naive / Protector")
    parser.add_argument("--ablation-repeats", type=int, default=3, help="paired repeats of each switch")
    parser.add_argument("--steps", type=int, default=10, help="PGD steps, pixel surrogate")
    parser.add_argument("--latent-steps", type=int, default=5, help="PGD steps, latent surrogate")
    parser.add_argument("--pixel-size", type=int, default=64)
    parser.add_argument("--pixel-images", type=int, default=32)
    parser.add_argument("--latent-size", type=int, default=128)
    parser.add_argument("--latent-images", type=int, default=8)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile arms")
    parser.add_argument("--quick", action="store_true", help="fewer arms and repeats")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512], help="GPU mode")
    parser.add_argument("--gpu-steps", type=int, default=10)
    parser.add_argument("--gpu-naive-images", type=int, default=4)
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--smoke", action="store_true", help="GPU mode with 8x narrower models (runs on a CPU)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    if args.quick:
        args.repeats, args.ablation_repeats = 2, 1
    mode = "profile_cpu" if args.profile else ("cpu" if args.device == "cpu" and not args.smoke else "gpu")
    if args.smoke:
        mode = "gpu_smoke"
    work = Path(tempfile.mkdtemp(prefix="udp-bench-protect-"))
    t0 = time.perf_counter()
    result = result_header("protect: naive one-image-at-a-time PGD vs Protector, and each speed switch", __file__,
                           argv, args.threads)
    if args.profile:
        result.update(profile_main(args, work))
    elif args.device == "cpu" and not args.smoke:
        result.update(cpu_main(args, work))
    else:
        result.update(gpu_main(args, work))
    machine_end(result["machine"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_result(result, args.out or RESULTS / f"protect_{mode}.json")
    return result


if __name__ == "__main__":
    main()
