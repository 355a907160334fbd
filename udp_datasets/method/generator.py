"""The generator engine: a small convolutional network G that maps an image to its perturbation in one pass.

    delta = epsilon * tanh(G(x))            at the image's own resolution, any size, any channel count

:class:`PerturbationGenerator` is a two-level U-shaped stack of 3x3 convolutions (full, 1/2 and 1/4
resolution, skip connections, no normalisation layer, so samples never mix and an image's output does not
depend on its batch). It is built from a seed (same seed, same weights) and has no randomness in its
forward pass: the same weights and image give the same perturbation, bit for bit on one machine. Grey
(1-channel) and grey+alpha images are fed as grey replicated to RGB and the perturbation averaged back, so
one network serves every mode the protector decodes.

Weights live in a folder: ``generator.safetensors`` (float32), ``config.json`` (the architecture) and
``provenance.json`` (how it was trained, :mod:`.generator_training`). :func:`load_generator` reads such a
folder (``None`` or ``"photoguard"``: the one shipped in the package, :data:`SHIPPED_GENERATOR_SHA256`), once
per process and device, with the SHA-256 of the weights it read (recorded in a job's provenance and in the
protector's fingerprint). :mod:`.engine` chooses between ``pgd``, ``generator`` (one forward pass) and
``generator+pgd`` (G's output as the start of ``generator_pgd_steps`` PGD steps).
"""

from __future__ import annotations

import functools
import json
import threading
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models.base import SurrogateError, weights_sha256
from ..models.shipped import packaged_weights

WEIGHTS_FILE = "generator.safetensors"
CONFIG_FILE = "config.json"
SHIPPED_GENERATOR = "photoguard"
"""The name of the generator shipped in the package (trained against the ``photoguard`` preset through TAEF2)."""
SHIPPED_GENERATOR_SHA256 = "312f9eecbe9cb5c22328a4f84365c6972bcb1900b7f907cfa6a3abaf4ca15300"
"""``weights_sha256`` of ``models/weights/generator_photoguard`` (checked by the tests)."""


class PerturbationGenerator(nn.Module):
    """x in [0, 1], (B, 3, H, W) -> unbounded (B, 3, H, W); ``epsilon * tanh`` of it is the perturbation."""

    def __init__(self, width: int = 24, seed: int = 0):
        super().__init__()
        self.width = width
        w = width
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.inc = nn.Sequential(nn.Conv2d(3, w, 3, padding=1), nn.SiLU(), nn.Conv2d(w, w, 3, padding=1), nn.SiLU())
            self.down1 = nn.Sequential(nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
                                       nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU())
            self.down2 = nn.Sequential(nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
                                       nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.SiLU())
            self.up2 = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 3, padding=1), nn.SiLU())
            self.up1 = nn.Sequential(nn.Conv2d(3 * w, w, 3, padding=1), nn.SiLU())
            self.out = nn.Conv2d(w, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.inc(x * 2 - 1)
        h1 = self.down1(h0)
        h2 = self.down2(h1)
        u1 = self.up2(torch.cat([h1, F.interpolate(h2, size=h1.shape[-2:], mode="nearest")], 1))
        u0 = self.up1(torch.cat([h0, F.interpolate(u1, size=h0.shape[-2:], mode="nearest")], 1))
        return self.out(u0)

    def config(self) -> dict[str, Any]:
        return {"architecture": "unet2-conv3x3", "width": self.width}


def generator_delta(net: PerturbationGenerator, x: torch.Tensor, epsilon: float) -> torch.Tensor:
    """epsilon * tanh(G(x)) for RGB or grey images (grey: fed as RGB, the perturbation averaged back to one
    channel), kept so that x + delta stays in [0, 1]."""
    grey = x.shape[1] == 1
    rgb = x.expand(-1, 3, -1, -1) if grey else x
    delta = (epsilon * torch.tanh(net(rgb.float()))).to(x.dtype)
    if grey:
        delta = delta.mean(1, keepdim=True)
    return (x + delta).clamp(0.0, 1.0) - x


# ------------------------------------------------------------------ weights on disk
def shipped_generator_folder() -> Path:
    """The folder of the shipped generator inside the installed package."""
    return packaged_weights("generator_photoguard")


def generator_folder(source: str | None) -> Path:
    """``None`` or ``"photoguard"``: the shipped generator; anything else: a local folder."""
    if source is None or source == SHIPPED_GENERATOR:
        return shipped_generator_folder()
    return Path(source).expanduser()


def save_generator(net: PerturbationGenerator, folder: str | Path) -> str:
    """Write ``generator.safetensors`` + ``config.json``; returns the weights' SHA-256."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / WEIGHTS_FILE).chmod(0o644)
    (folder / CONFIG_FILE).write_text(json.dumps(net.config(), indent=2, sort_keys=True))
    return weights_sha256(folder)


def read_generator(source: str | None) -> tuple[PerturbationGenerator, str]:
    """(the network, its weights' SHA-256) from a generator folder (never a pickle; nothing downloaded)."""
    from safetensors.torch import load_file

    folder = generator_folder(source)
    if not (folder / WEIGHTS_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
        raise SurrogateError(f"generator {source!r}: {folder} has no {WEIGHTS_FILE} and {CONFIG_FILE}; train one "
                             "with `udp-datasets train-generator CORPUS OUT --preset P` and pass --generator OUT")
    spec = json.loads((folder / CONFIG_FILE).read_text())
    net = PerturbationGenerator(width=int(spec.get("width", 24)))
    net.load_state_dict(load_file(str(folder / WEIGHTS_FILE)))
    return net.eval().requires_grad_(False), weights_sha256(folder)


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _cached(folder: str, device: str) -> tuple[PerturbationGenerator, str]:
    net, sha256 = read_generator(folder)
    return net.to(device), sha256


def load_generator(source: str | None, device: torch.device | str = "cpu") -> tuple[PerturbationGenerator, str]:
    """(the generator of ``source`` on ``device``, the SHA-256 of the weights it was read from), loaded once per
    process (frozen, eval mode)."""
    with _LOCK:
        return _cached(str(generator_folder(source)), str(device))


def generator_sha256(source: str | None) -> str | None:
    """The weights' SHA-256 of the generator ``source`` names, without loading it (None: unreadable, reported
    precisely when it is loaded)."""
    folder = generator_folder(source)
    if not (folder / WEIGHTS_FILE).is_file():
        return None
    try:
        return weights_sha256(folder)
    except SurrogateError:
        return None
