"""Engines side by side (issue 19): the generator, generator+PGD (K = 5) and PGD at the defaults.

    python benchmarks/bench_generator.py                 # CPU, 1 thread, 64 images of 64 px, 3 paired repeats
    python benchmarks/bench_generator.py --quick         # CPU, 32 images, 2 paired repeats (~2 minutes)
    python benchmarks/bench_generator.py --gpu           # GPU (cuda), 256 px images, peak GPU memory too

Every arm is ``Protector.protect_images`` end to end (decoding, the engine, 8-bit rounding, the budget
proof, PNG encoding), on the same images, at the same budget (8/255), against the same surrogate, on the
same machine:

- ``pgd``: what ``udp-datasets protect`` runs with no method flags (config version 2 on the shipped pair
  ``taef2``: the encoder objective pushed away from E(x), random start, 40 steps);
- ``generator``: ``--engine generator`` with the shipped generator (one forward pass);
- ``generator_pgd5``: ``--engine generator+pgd --generator-pgd-steps 5``.

Paired runs: the arms run in turn (pgd, generator, generator_pgd5, pgd, ...) in one process, after a
warm-up of each, so load from other processes hits them alike; the median of the per-pair ratios to
``pgd`` is reported. Peak memory: each arm once in a fresh process (freed memory stays mapped in a long
one), its peak RSS over what was resident before the run (and peak GPU memory in GPU mode), as
bench_protect.py does. ``surrogate_objective`` is the loss the engines optimise (photoguard's latent
distance through TAEF2) on each arm's output, for orientation only: it is not a measure of protection
(the few-shot evaluation is). JSON to ``benchmarks/results/generator_<cpu|gpu>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, machine_end, result_header, write_result  # noqa: E402
from bench_protect import bench_images, loss_change, measured, memory_child_run, outputs_of  # noqa: E402

ARMS = {"pgd": {"engine": "pgd"}, "generator": {"engine": "generator"},
        "generator_pgd5": {"engine": "generator+pgd", "generator_pgd_steps": 5}}


def default_config(device: str, batch_size: int):
    """``udp-datasets protect``'s config with no method flags (version 2 on the shipped pair)."""
    from udp_datasets import ProtectionConfig
    from udp_datasets.config import apply_version_defaults

    config = ProtectionConfig(surrogate="taef2", device=device, batch_size=batch_size)
    return apply_version_defaults(config, latent=True, explicit={"surrogate", "device", "batch_size"})


def protector_for(config):
    from udp_datasets import Protector

    protector = Protector(config, progress=False)
    protector.prepare_surrogate()
    return protector


def memory_child(spec: dict[str, Any]) -> dict[str, Any]:
    """In this fresh process: load, warm up on one image, reset the peak mark, run the arm once."""
    from udp_datasets import ProtectionConfig

    config = ProtectionConfig.from_json(spec["config"])
    images = bench_images(spec["size"], spec["count"])
    protector = protector_for(config)
    protector.protect_images(images[:1])
    row = measured(lambda: protector.protect_images(images), len(images))["row"]
    return {k: round(v, 1) for k, v in row.items() if k != "images_per_s"}


def memory_of(configs: dict[str, Any], size: int, count: int, threads: int) -> dict[str, Any]:
    out = {}
    for name, config in configs.items():
        spec = {"config": config.to_json(indent=None), "size": size, "count": count}
        out[name] = memory_child_run(__file__, spec, threads)
    return out


def paired_arms(configs: dict[str, Any], images: list[np.ndarray], repeats: int) -> dict[str, Any]:
    protectors = {name: protector_for(config) for name, config in configs.items()}
    for p in protectors.values():  # warm-up: the generator's weights, the first allocations
        p.protect_images(images[:2])
    runs: dict[str, list[dict]] = {name: [] for name in protectors}
    outs: dict[str, Any] = {}
    for _ in range(repeats):
        for name, p in protectors.items():
            m = measured(lambda: p.protect_images(images), len(images))
            runs[name].append(m["row"])
            outs[name] = m["out"]
    summary = {}
    for name, rows in runs.items():
        ips = [r["images_per_s"] for r in rows]
        ratios = [r["images_per_s"] / b["images_per_s"] for r, b in zip(rows, runs["pgd"])]
        summary[name] = {"images_per_s": [round(v, 3) for v in ips],
                         "median_images_per_s": round(statistics.median(ips), 3),
                         "ratio_to_pgd_per_pair": [round(v, 2) for v in ratios],
                         "median_ratio_to_pgd": round(statistics.median(ratios), 2),
                         "protected": sum(type(r).__name__ == "ProtectedImage" for r in outs[name])}
        if "peak_gpu_mib" in rows[0]:
            summary[name]["peak_gpu_mib_in_run"] = round(max(r["peak_gpu_mib"] for r in rows), 1)
    for name in protectors:  # the objective the engines optimise, on each arm's own outputs (not efficacy)
        done = [(c, r) for c, r in zip(images, outs[name]) if type(r).__name__ == "ProtectedImage"]
        summary[name]["surrogate_objective_change"] = loss_change(protectors["pgd"], [c for c, _ in done],
                                                                  outputs_of([r for _, r in done]))
    return summary


def run(args: argparse.Namespace) -> dict[str, Any]:
    from udp_datasets.method.generator import SHIPPED_GENERATOR_SHA256

    device = "cuda" if args.gpu else "cpu"
    base = default_config(device, args.batch_size)
    configs = {name: base.replace(**fields) for name, fields in ARMS.items()}
    images = bench_images(args.size, args.images)
    result: dict[str, Any] = {
        "workload": {"images": len(images), "image_size": args.size, "epsilon": "8/255", "batch_size": args.batch_size,
                     "device": device, "repeats": args.repeats, "surrogate": "taef2 (the shipped pair)",
                     "pgd": f"config version 2 defaults: objective {base.objective}, encoder_target "
                            f"{base.encoder_target}, random_start {base.random_start}, steps {base.steps}",
                     "generator": f"the shipped generator (photoguard, weights sha256 {SHIPPED_GENERATOR_SHA256})",
                     "generator_pgd5": "the shipped generator, then 5 PGD steps of the same objective",
                     "configs": {name: c.to_dict() for name, c in configs.items()},
                     "config_hashes": {name: c.hash() for name, c in configs.items()}},
        "paired": paired_arms(configs, images, args.repeats)}
    logging.info("paired runs done: %s", {k: v["median_ratio_to_pgd"] for k, v in result["paired"].items()})
    result["peak_memory_fresh_process"] = memory_of(configs, args.size, len(images), args.threads)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpu", action="store_true", help="run on cuda (256 px images by default)")
    parser.add_argument("--quick", action="store_true", help="32 images, 2 paired repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: other jobs share the cores)")
    parser.add_argument("--images", type=int, help="images per run (default 64; --quick 32)")
    parser.add_argument("--size", type=int, help="image side in px (default 64 on a CPU, 256 on a GPU)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, help="paired repeats (default 3; --quick 2)")
    parser.add_argument("--out", help="JSON result (default benchmarks/results/generator_<cpu|gpu>.json)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.memory_child:
        print(json.dumps(memory_child(json.loads(args.memory_child))))
        return {}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.images = args.images or (32 if args.quick else 64)
    args.size = args.size or (256 if args.gpu else 64)
    args.repeats = args.repeats or (2 if args.quick else 3)
    t0 = time.perf_counter()
    result = result_header("engines: generator, generator+PGD (K=5) and PGD at the defaults, paired, same images "
                           "and budget", __file__, argv, args.threads)
    tempfile.tempdir = tempfile.mkdtemp(prefix="udp-bench-generator-")
    result.update(run(args))
    machine_end(result["machine"])
    shared = bool(result["machine"]["other_processes"] or result["machine"]["other_processes_end"])
    result["notes"] = {
        "threads": f"torch at {args.threads} thread(s) (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}) on "
                   f"{os.cpu_count()} cores",
        "shared_machine": "other jobs shared these cores during the run (other_processes, load averages): the "
                          "paired ratios are what to compare" if shared else "no other busy process was seen",
        "images_per_s": "Protector.protect_images end to end: decoding, the engine, 8-bit rounding, the budget proof, "
                        "PNG encoding",
        "surrogate_objective_change": "the objective all three optimise (photoguard's ||E(x+d) - E(x)||^2 through "
                                      "TAEF2, mean over latent elements, 8 draws) on each arm's 8-bit outputs, "
                                      "minus the clean images': orientation only, NOT a measure of protection "
                                      "(the few-shot evaluation is: docs/efficacy.md, where every engine's "
                                      "erasure is noise's)"}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    write_result(result, args.out or RESULTS / f"generator_{'gpu' if args.gpu else 'cpu'}.json")
    return result


if __name__ == "__main__":
    main()
