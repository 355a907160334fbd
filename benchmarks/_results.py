"""What every benchmark records around its measurements, and how it writes them.

The benchmarks run as scripts (``python benchmarks/bench_x.py``) and import this module by
its basename (their own folder is on ``sys.path``). Standard library only at import time:
torch and the package are imported inside :func:`machine`.

- :func:`result_header`: the result's first keys: what was measured, the command, the machine;
- :func:`machine_end`: the load and the other busy processes at the end of the run;
- :func:`write_result`: the result as indented JSON to its file (folder made as needed) and to stdout.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine(threads: int) -> dict[str, Any]:
    import torch

    from udp_datasets import __version__
    from udp_datasets.models.runtime import native_bf16_cpu

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(), "udp_datasets": __version__,
            "native_bf16": native_bf16_cpu(), "load_average_start": list(os.getloadavg()),
            "other_processes": busy_processes()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    return info


def busy_processes(limit: int = 6) -> list[str]:
    """What else was using the CPU (command lines, shortened), as ps saw it."""
    try:
        out = subprocess.run(["ps", "-eo", "pcpu,pid,args", "--sort=-pcpu", "--no-headers"], capture_output=True,
                             text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return []
    me = str(os.getpid())
    rows = [line.split(None, 2) for line in out if line.strip()]
    return [f"{r[0]}% {r[2][:80]}" for r in rows if len(r) == 3 and r[1] != me and float(r[0]) >= 5][:limit]


def result_header(benchmark: str, script: str, argv: list[str] | None, threads: int) -> dict[str, Any]:
    """``benchmark``, ``command`` (as typed: ``script`` is the benchmark's ``__file__``) and ``machine``."""
    return {"benchmark": benchmark,
            "command": f"python benchmarks/{Path(script).name} " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine(threads)}


def machine_end(info: dict[str, Any]) -> None:
    """Add the end-of-run load averages and busy processes to a :func:`machine` description."""
    info["load_average_end"] = list(os.getloadavg())
    info["other_processes_end"] = busy_processes()


def write_result(result: dict[str, Any], out: Path | str) -> None:
    """Write ``result`` as indented JSON (values JSON cannot hold as their ``str``) and print it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str)
    out.write_text(text + "\n")
    print(text)
