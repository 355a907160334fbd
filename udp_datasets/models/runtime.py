"""How fast the frozen surrogate runs in the transform: the speed switches, and what ``auto`` means.

None of these changes the method (the loss, the steps, the budget); some change floating-point
rounding (autocast, channels_last, compile), which the tests bound against the float32 reference.
Each is switchable, so ``benchmarks/bench_protect.py`` can measure it alone (docs/performance.md
has the numbers behind every ``auto`` rule).

- ``freeze``: ``requires_grad_(False)`` on every parameter (PGD differentiates w.r.t. pixels only).
- ``reuse_buffers``: PGD updates delta in place (same operations, same bits, fewer allocations).
- ``mixed_shapes``: images of different sizes share a batch (each is resized to the surrogate's
  working size on its own, then one forward pass runs for all); off = one batch per exact shape.
- ``overlap``: 8-bit rounding, budget proof and PNG encoding of a finished batch run in a
  background thread while the next batch is optimised.
- ``sdpa``: diffusers' scaled-dot-product attention processors (off = the classic processor).
- ``channels_last``, ``autocast`` (``bfloat16`` / ``float16``), ``compile`` (``torch.compile``).
- ``batch_pixels``: the pixel budget of one batch (0 = from the device's memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch

logger = logging.getLogger(__name__)

BYTES_PER_PIXEL = 160
"""Peak host memory per image pixel of the transform's full-resolution tensors (RGB float32: x, delta,
x + delta, the resize and its backward, the gradient, the 8-bit copy): twice the ~80 B measured for a
2048 x 2048 image by ``benchmarks/bench_protect.py`` (``memory_per_pixel``), as a margin."""
MEMORY_SHARE = 0.25
"""Share of the device's total memory that ``batch_pixels=0`` (auto) lets one batch's pixels take."""
MIN_AUTO_PIXELS = 4096 * 4096
COMPILE_OPTIONS: dict[str, Any] = {}
"""Keyword arguments of ``torch.compile`` (default: inductor; tests use a cheaper backend)."""


@dataclass(frozen=True)
class Tuning:
    """The transform's speed switches, resolved for one device and surrogate (see the module docstring)."""

    freeze: bool = True
    reuse_buffers: bool = True
    mixed_shapes: bool = True
    overlap: bool = True
    sdpa: bool = True
    channels_last: bool = False
    autocast: str = "off"
    compile: bool = False
    batch_pixels: int = 0

    def replace(self, **changes: Any) -> "Tuning":
        return dataclasses.replace(self, **changes)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"off": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[self.autocast]


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        return False


def auto_autocast(device: torch.device, kind: str, weights_dtype: torch.dtype) -> str:
    """``autocast='auto'``: bfloat16 on GPUs that have it (else float16); on a CPU with native bfloat16
    only for latent surrogates, whose convolutional encoder runs 2x faster in it (pixel surrogates
    gain less than their rounding costs, docs/performance.md); float32 everywhere else. Weights
    already in half precision (``dtype``) are left alone."""
    if weights_dtype != torch.float32:
        return "off"
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if device.type == "cpu" and kind == "latent" and native_bf16_cpu():
        return "bfloat16"
    return "off"


def auto_channels_last(device: torch.device, kind: str, autocast: str) -> bool:
    """``channels_last='auto'``: on for GPUs (tensor cores want NHWC) and with CPU bfloat16 (oneDNN's
    blocked NHWC kernels); off for float32 on a CPU, where it changes rounding for a few per cent."""
    return device.type == "cuda" or (device.type == "cpu" and autocast == "bfloat16")


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of the device: the GPU's, or the machine's RAM (a cgroup limit when lower)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(limit_file).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return int(total)


def auto_batch_pixels(device: torch.device) -> int:
    """``batch_pixels=0``: a quarter of the device's memory at :data:`BYTES_PER_PIXEL` (at least 16 M)."""
    return max(MIN_AUTO_PIXELS, int(device_memory_bytes(device) * MEMORY_SHARE) // BYTES_PER_PIXEL)


def resolve_tuning(config: Any, device: torch.device, kind: str, weights_dtype: torch.dtype = torch.float32,
                   overrides: dict[str, Any] | None = None) -> Tuning:
    """The switches for this device and surrogate kind: ``config``'s runtime fields with ``auto``
    resolved, then ``overrides`` (``{field: value}`` of :class:`Tuning`, for benchmarks and tests)."""
    autocast = config.autocast if config.autocast != "auto" else auto_autocast(device, kind, weights_dtype)
    if autocast != "off" and weights_dtype != torch.float32:
        autocast = "off"  # half-precision weights already run in half precision
    if config.channels_last == "auto":
        channels_last = auto_channels_last(device, kind, autocast)
    else:
        channels_last = config.channels_last == "on"
    tuning = Tuning(channels_last=channels_last, autocast=autocast, compile=config.torch_compile,
                    batch_pixels=config.batch_pixels or auto_batch_pixels(device))
    return tuning.replace(**overrides) if overrides else tuning


def networks(surrogate: Any) -> list[torch.nn.Module]:
    """The surrogate's networks that run in every PGD step (UNet, and the VAE of a latent one)."""
    nets = [surrogate.unet]
    vae = getattr(surrogate, "vae", None)
    if vae is not None:
        nets.append(vae)
    return nets


def apply_tuning(surrogate: Any, tuning: Tuning) -> None:
    """Put the surrogate's networks in the state the switches ask for (idempotent)."""
    for net in networks(surrogate):
        net.requires_grad_(not tuning.freeze)
        net.to(memory_format=torch.channels_last if tuning.channels_last else torch.contiguous_format)
        set_attention(net, tuning.sdpa)
    if tuning.compile:
        # what runs every step: the denoiser, and a latent surrogate's VAE *encoder* (``vae.encode`` calls
        # ``vae.encoder``, not ``vae.forward``, so compiling the whole VAE would compile nothing used)
        vae = getattr(surrogate, "vae", None)
        for net in [surrogate.unet] + ([vae.encoder] if vae is not None else []):
            if not getattr(net, "_udp_compiled", False):
                net.compile(**COMPILE_OPTIONS)
                net._udp_compiled = True


def set_attention(net: torch.nn.Module, sdpa: bool) -> None:
    """diffusers' SDPA processor (``AttnProcessor2_0``, its default) or the classic one, on every
    attention module of ``net`` (any diffusers model; a network without attention is left as it is)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    wanted = AttnProcessor2_0 if sdpa else AttnProcessor
    for module in net.modules():
        if isinstance(module, Attention) and type(module.processor) in (AttnProcessor, AttnProcessor2_0) \
                and not isinstance(module.processor, wanted):
            module.set_processor(wanted())


@contextlib.contextmanager
def autocast(device: torch.device, tuning: Tuning) -> Iterator[None]:
    """``torch.autocast`` for the tuning's mixed precision, or nothing."""
    dtype = tuning.autocast_dtype
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


def grad_scale(tuning: Tuning) -> float:
    """float16 gradients of a mean loss underflow: PGD scales the loss (only the sign is used)."""
    return 1024.0 if tuning.autocast == "float16" else 1.0
