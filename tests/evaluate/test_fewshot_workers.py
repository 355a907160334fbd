"""The few-shot study's worker processes end when the study's process is killed (no orphans left training)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")

# A study's pool with two workers, each busy with a task far longer than the test.
STUDY = textwrap.dedent("""
    import time
    from udp_datasets.evaluate.experiments.fewshot import TaskPool

    with TaskPool(workers=2, threads=1, progress=False) as pool:
        busy = [pool.executor.submit(time.sleep, 300) for _ in range(2)]
        busy[0].result()
""")


def worker_pids(parent: int, count: int, timeout: float = 60) -> list[int]:
    """The ``count`` spawned worker processes of ``parent`` (its resource tracker is not one)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes()
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            if ppid == parent and b"spawn_main" in cmdline:
                found.append(int(stat.parent.name))
        if len(found) >= count:
            return found
        time.sleep(0.2)
    raise AssertionError(f"the pool did not start {count} workers in {timeout} s")


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_workers_stop_when_the_study_process_is_killed(sig: signal.Signals) -> None:
    study = subprocess.Popen([sys.executable, "-c", STUDY])
    workers: list[int] = []
    try:
        workers = worker_pids(study.pid, 2)
        assert all(alive(pid) for pid in workers)
        os.kill(study.pid, sig)
        study.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(pid) for pid in workers), f"orphaned workers still run after {sig.name}"
    finally:
        study.kill()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
