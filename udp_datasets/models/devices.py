"""Where a model runs: one rule for the protector, the jobs and the evaluation's victims.

``auto`` takes the machine's accelerator as torch reports it (``torch.accelerator``: CUDA, ROCm,
XPU, MPS ...), at index ``rank % count`` so that several workers of one machine spread over its
devices; the CPU when there is none. Any other value is used as given.
"""

from __future__ import annotations

import torch


def resolve_device(spec: str = "auto", rank: int | None = None) -> torch.device:
    """``auto`` -> the accelerator (``cuda:{rank % n}`` and the like) or the CPU; else ``torch.device(spec)``."""
    if spec != "auto":
        return torch.device(spec)
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and accelerator.is_available():
        device = accelerator.current_accelerator()
        count = max(accelerator.device_count(), 1)
        return torch.device(device.type, (rank or 0) % count)
    if torch.cuda.is_available():  # torch < 2.6 has no torch.accelerator
        return torch.device("cuda", (rank or 0) % torch.cuda.device_count())
    return torch.device("cpu")
