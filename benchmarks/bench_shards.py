"""Shard-pipeline benchmark: full pipeline vs the bare protector, and peak memory vs job size.

    python benchmarks/bench_shards.py                 # ~3 minutes on 2 CPU cores
    python benchmarks/bench_shards.py --out benchmarks/results/shards.json

1. Throughput, measured side by side in one process on the same images: the bare
   protector (``protector.protect_images`` on image bytes already in memory, in
   batches of ``batch_size``) against the full shard pipeline (``run_shards``: read
   tar shards, group samples, protect, write PNG members and tars, fsync, rename,
   manifest, markers, job summary). Runs alternate (bare, pipeline, bare, pipeline)
   and the best of each is compared, so load from other processes hits both alike.
   Goal: pipeline >= 0.9x bare.
2. Peak RSS (``ru_maxrss``) of a fresh process running the pipeline on 1x and 10x
   the number of samples: 10x the shards of the same size, and 10x the samples per
   shard. Memory does not depend on the PGD step count, so these runs use one step.
   Goal: flat within 10 %.

Real images: photographs and face crops shipped with scikit-image, as JPEG members
with a caption, a json and a class member per sample (a typical WebDataset layout).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _results import RESULTS, write_result  # noqa: E402


def make_images(size: int) -> list[np.ndarray]:
    from udp_datasets.sources.bundled import faces_rgb, photo_crops

    return photo_crops(size, per_photo=4) + faces_rgb(size, count=64)  # 96 real images


def write_shards(root: Path, images: list[np.ndarray], shards: int, per_shard: int) -> str:
    root.mkdir(parents=True, exist_ok=True)
    k = 0
    for s in range(shards):
        with tarfile.open(root / f"bench-{s:06d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i in range(per_shard):
                arr = images[k % len(images)]
                buf = io.BytesIO()
                Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                key = f"{k:09d}"
                for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.txt", f"caption {k}".encode()),
                                   (f"{key}.json", json.dumps({"i": k}).encode()), (f"{key}.cls", b"1")):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime = len(data), 1_700_000_000
                    tar.addfile(info, io.BytesIO(data))
                k += 1
    return str(root / f"bench-{{000000..{shards - 1:06d}}}.tar")


def read_images(pattern: str) -> tuple[list[bytes], list[str]]:
    from udp_datasets.formats.webdataset import iter_tar_samples
    from udp_datasets.sources.shards import discover_shards

    values, keys = [], []
    for shard in discover_shards(pattern):
        for sample in iter_tar_samples(shard.url):
            for j in sample.images:
                values.append(sample.members[j].data)
                keys.append(sample.key)
    return values, keys


def fit_surrogate(images: list[np.ndarray], folder: Path, config) -> str:
    from udp_datasets import Protector

    protector = Protector(config.replace(surrogate=None), progress=False)
    protector.fit(images[:32], output_dir=folder)
    return str(folder)


def bare(config, values: list[bytes], keys: list[str]) -> float:
    from udp_datasets import Protector

    protector = Protector(config, progress=False)
    protector.prepare_surrogate()  # load outside the timed region, as the pipeline's per-process setup is
    start = time.perf_counter()
    n = 0
    for i in range(0, len(values), config.batch_size):
        out = protector.protect_images(values[i:i + config.batch_size], keys=keys[i:i + config.batch_size])
        n += sum(1 for r in out if hasattr(r, "png"))
    seconds = time.perf_counter() - start
    assert n == len(values)
    return n / seconds


def pipeline(config, pattern: str, dst: Path) -> float:
    from udp_datasets.jobs.shard_job import run_shards

    start = time.perf_counter()
    summary = run_shards(pattern, dst, config, progress=False)
    seconds = time.perf_counter() - start
    assert summary.count == summary.images and summary.errors == 0
    return summary.images / seconds


def _memory_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process image in MiB.

    Linux ``VmHWM`` is reset by ``exec``; ``ru_maxrss`` is not (it carries the parent's
    high-water mark into a child started by fork + exec), so it is only a fallback.
    """
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                      if ":" in line)
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024
    except (OSError, KeyError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, peak


def rss_child(args: argparse.Namespace) -> None:
    """Run the pipeline in this fresh process and print its peak RSS (MiB) as JSON."""
    import torch

    from udp_datasets import ProtectionConfig
    from udp_datasets.jobs.distributed import make_state
    from udp_datasets.jobs.shard_job import run_shards

    torch.set_num_threads(args.threads)
    config = ProtectionConfig.from_json(args.config_json)
    make_state()
    import datasets  # noqa: F401 - what the job imports anyway, so "after imports" is that
    import diffusers  # noqa: F401

    before, _ = _memory_mib()
    start = time.perf_counter()
    summary = run_shards(args.src, args.dst, config, progress=False)
    _, peak = _memory_mib()
    print(json.dumps({"images": summary.images, "shards": summary.shards, "peak_rss_mib": round(peak, 1),
                      "rss_after_imports_mib": round(before, 1),
                      "seconds": round(time.perf_counter() - start, 2)}))


def measure_rss(config, pattern: str, dst: Path, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--rss-child", "--src", pattern, "--dst", str(dst), "--config-json",
           config.to_json(indent=None), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(values: list[float]) -> float:
    return float(np.median(values))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULTS / "shards.json"))
    parser.add_argument("--size", type=int, default=64, help="image side (pixels)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    parser.add_argument("--config-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return {}

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from udp_datasets import ProtectionConfig, __version__

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="udp-bench-shards-"))
    images = make_images(args.size)
    base = ProtectionConfig(resolution=32, steps=args.steps, batch_size=args.batch_size, fit_rounds=2,
                            fit_surrogate_steps=20, fit_pgd_steps=2, fit_batch_size=16)
    config = base.replace(surrogate=fit_surrogate(images, work / "surrogate", base))

    # 1. throughput, side by side
    pattern = write_shards(work / "src", images, args.shards, args.per_shard)
    values, keys = read_images(pattern)
    bare_runs, pipe_runs = [], []
    for r in range(args.repeats):
        bare_runs.append(bare(config, values, keys))
        pipe_runs.append(pipeline(config, pattern, work / f"out-{r}"))
    for r in range(1, args.repeats):  # same bytes every time: the pipeline is deterministic
        for shard in (work / "out-0").glob("*.tar"):
            assert shard.read_bytes() == (work / f"out-{r}" / shard.name).read_bytes()
    ratio = max(pipe_runs) / max(bare_runs)
    pair_ratios = [p / b for p, b in zip(pipe_runs, bare_runs)]

    # 2. peak RSS for 1x and 10x the samples
    rss_config = config.replace(steps=1)
    small = measure_rss(rss_config, pattern, work / "rss-1x", args.threads)
    many_shards = measure_rss(rss_config, write_shards(work / "src-10x-shards", images, args.shards * 10,
                                                      args.per_shard), work / "rss-10x-shards", args.threads)
    big_shards = measure_rss(rss_config, write_shards(work / "src-10x-per-shard", images, args.shards,
                                                     args.per_shard * 10), work / "rss-10x-per-shard",
                             args.threads)
    result = {
        "benchmark": "shard pipeline (WebDataset tars) vs bare protector; peak RSS vs job size",
        "machine": {"cpus": os.cpu_count(), "torch_threads": args.threads, "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "udp_datasets": __version__, "note": "2 CPU cores shared with other jobs; numbers are noisy"},
        "workload": {"images": len(values), "shards": args.shards, "samples_per_shard": args.per_shard,
                     "image_size": args.size, "members_per_sample": ["jpg", "txt", "json", "cls"],
                     "steps": args.steps, "batch_size": args.batch_size, "surrogate": "tiny, resolution 32"},
        "throughput": {
            "bare_images_per_s": [round(x, 2) for x in bare_runs],
            "pipeline_images_per_s": [round(x, 2) for x in pipe_runs],
            "ratio_best_pipeline_over_best_bare": round(ratio, 3),
            "ratio_per_pair": [round(x, 3) for x in pair_ratios],
            "ratio_median_of_pairs": round(_median(pair_ratios), 3),
            "goal": ">= 0.9", "met": ratio >= 0.9,
        },
        "peak_rss": {
            "1x": small, "10x_shards": many_shards, "10x_samples_per_shard": big_shards,
            "ratio_10x_shards": round(many_shards["peak_rss_mib"] / small["peak_rss_mib"], 3),
            "ratio_10x_samples_per_shard": round(big_shards["peak_rss_mib"] / small["peak_rss_mib"], 3),
            "growth_over_after_imports_mib": {
                name: round(m["peak_rss_mib"] - m["rss_after_imports_mib"], 1)
                for name, m in (("1x", small), ("10x_shards", many_shards), ("10x_samples_per_shard", big_shards))},
            "goal": "flat within 10% (ratio <= 1.10)",
            "met": max(many_shards["peak_rss_mib"], big_shards["peak_rss_mib"]) <= 1.10 * small["peak_rss_mib"],
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    write_result(result, args.out)
    return result


if __name__ == "__main__":
    main()
