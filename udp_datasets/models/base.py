"""The surrogate interface: a denoiser + scheduler pair, what it is (:class:`SurrogateRef`),
and the safetensors-only rules every loader shares.

A surrogate is a denoiser plus the scheduler it was trained with. :class:`Surrogate` hides
where the denoiser lives: ``to_model_space`` maps pixels in [0, 1] to what the denoiser sees:
a resized [-1, 1] image for a pixel model, ``scaling_factor * E(x)`` for a latent one
(:class:`udp_datasets.models.latent.LatentSurrogate`), with gradients flowing through the
VAE encoder back to the pixels. Concrete kinds live in ``pixel.py`` and ``latent.py``; the one
loader above them is ``loader.py`` (so neither kind imports the other).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F


class SurrogateError(RuntimeError):
    """A surrogate that cannot be found, read or used, with the fix in the message."""


# Built-in architectures: sized for CPU demos and tests (tiny) or a single GPU (small, base).

@dataclass(frozen=True)
class SurrogateRef:
    """What a surrogate *is*, without its weights: small, picklable, hashable.

    ``sha256`` covers the weight files, so a fingerprint or provenance record built
    from the reference changes exactly when the weights do.
    """

    kind: str  # "pixel" or "latent"
    source: str | None  # local directory or Hub id; None = built-in, untrained
    revision: str | None = None
    sha256: str | None = None
    architecture: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Surrogate:
    """A denoiser + scheduler pair with the few operations the objectives need."""

    kind = "pixel"

    def __init__(self, unet: torch.nn.Module, scheduler: Any, ref: SurrogateRef):
        self.unet = unet
        self.scheduler = scheduler
        self.ref = ref
        size = unet.config.sample_size
        self.sample_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.in_channels: int = unet.config.in_channels
        # what the pixels are resized to and how many channels they need (a latent model differs)
        self.image_size: tuple[int, int] = self.sample_size
        self.image_channels: int = self.in_channels
        self.prediction_type: str = getattr(scheduler.config, "prediction_type", "epsilon")
        self.alphas_cumprod: torch.Tensor = scheduler.alphas_cumprod.detach().float().cpu()
        self._abar_device: torch.Tensor | None = None
        self.extras: dict[str, torch.Tensor] = {}
        """What fit learned besides the weights (``EXTRAS_FILE``): earlier training stages
        (``stage{k}.<param>``), unit clean-loss gradient directions (``direction{k}.<param>``,
        k = -1 for the final weights) and cluster centroids / shared perturbations."""

    # ---------------------------------------------------------------- devices
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "Surrogate":
        self.unet.to(device)
        if next(self.unet.parameters()).dtype != dtype:
            self.unet.to(dtype)
        self._abar_device = None
        return self

    def freeze(self) -> "Surrogate":
        """No parameter gradients: PGD only differentiates w.r.t. the pixels."""
        self.unet.eval()
        self.unet.requires_grad_(False)
        return self

    @property
    def model_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one sample in the denoiser's space (noise is drawn in it)."""
        return (self.in_channels, *self.sample_size)

    # ------------------------------------------------------------ the maths
    def to_model_space(self, x01: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1], (B, C, H, W) at any size -> the denoiser's x_0 in [-1, 1].

        Differentiable (antialiased bilinear resize), so gradients reach the
        full-resolution perturbation.
        """
        return self.fit_pixels(x01).to(next(self.unet.parameters()).dtype) * 2 - 1

    def fit_pixels(self, x01: torch.Tensor) -> torch.Tensor:
        """Images at any size -> ``image_size`` with ``image_channels`` (grey is repeated), differentiably."""
        x = x01
        if x.shape[1] != self.image_channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.image_channels, -1, -1)
            else:
                raise SurrogateError(
                    f"images have {x.shape[1]} channels but the surrogate expects {self.image_channels}")
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def _abar(self, device: torch.device) -> torch.Tensor:
        if self._abar_device is None or self._abar_device.device != device:
            self._abar_device = self.alphas_cumprod.to(device)
        return self._abar_device

    conditional = False
    """Whether the denoiser needs a text condition (``denoising_loss(..., cond=)``)."""

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The denoiser's output; ``params`` swaps in other weights (a pool stage, theta +- h*g)."""
        kwargs = {} if cond is None else {"encoder_hidden_states": cond}
        if params is None:
            return self.unet(x_t, t, **kwargs).sample
        return torch.func.functional_call(self.unet, params, (x_t, t), kwargs, strict=False).sample

    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The denoiser's estimate of the noise in ``x_t``, whatever it predicts (epsilon, v or x0)."""
        pred = self.predict(x_t, t, cond).float()
        if self.prediction_type == "epsilon":
            return pred
        abar = self._abar(x_t.device)[t].view(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":
            return abar.sqrt() * pred + (1 - abar).sqrt() * x_t.float()
        if self.prediction_type == "sample":
            return (x_t.float() - abar.sqrt() * pred) / (1 - abar).sqrt().clamp_min(1e-8)
        raise SurrogateError(f"unsupported prediction_type {self.prediction_type!r}")

    def denoising_loss(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                       cond: torch.Tensor | None = None,
                       params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-sample || target - model(sqrt(abar) x0 + sqrt(1-abar) eps, t) ||^2 (mean over pixels)."""
        abar = self._abar(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
        pred = self.predict(x_t, t, cond, params)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            target = abar.sqrt() * noise - (1 - abar).sqrt() * x0
        elif self.prediction_type == "sample":
            target = x0
        else:
            raise SurrogateError(f"unsupported prediction_type {self.prediction_type!r}")
        return (pred.float() - target.float()).pow(2).flatten(1).mean(1)

    # -------------------------------------------------------------- storage
    def save(self, directory: str | Path) -> SurrogateRef:
        """Save as a diffusers ``DDPMPipeline`` folder (safetensors), atomically.

        The folder loads back with :func:`load_surrogate` and with
        ``diffusers.DDPMPipeline.from_pretrained``.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            self._write(tmp)
            self.save_extras(tmp)
            if directory.exists():
                shutil.rmtree(directory)
            os.replace(tmp, directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.ref = SurrogateRef(kind=self.kind, source=str(directory.resolve()),
                                sha256=weights_sha256(directory), architecture=self.ref.architecture)
        return self.ref


    def _write(self, directory: Path) -> None:
        """The model files of :meth:`save` (a latent surrogate writes its own layout)."""
        from diffusers import DDPMPipeline

        DDPMPipeline(unet=self.unet, scheduler=self.scheduler).save_pretrained(directory, safe_serialization=True)

    def save_extras(self, directory: Path) -> None:
        if self.extras:
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in self.extras.items()},
                      str(Path(directory) / EXTRAS_FILE))

    def load_extras(self, directory: Path) -> None:
        path = Path(directory) / EXTRAS_FILE
        if path.exists():
            from safetensors.torch import load_file

            self.extras = load_file(str(path))

    def extras_group(self, prefix: str) -> dict[str, torch.Tensor]:
        """``{name: tensor}`` of the extras stored under ``prefix.`` (e.g. a pool stage)."""
        n = len(prefix) + 1
        return {k[n:]: v for k, v in self.extras.items() if k.startswith(prefix + ".")}

    def num_stages(self) -> int:
        """Earlier training stages kept by fit (``fit_pool`` - 1), besides the final weights."""
        return len({k.split(".", 1)[0] for k in self.extras if k.startswith("stage")})

EXTRAS_FILE = "udp_extras.safetensors"

def component_dir(folder: Path, name: str) -> Path:
    sub = folder / name
    return sub if (sub / "config.json").exists() or (sub / "scheduler_config.json").exists() else folder

def require_safetensors(directory: Path, cls_name: str) -> None:
    if not list(directory.glob("*.safetensors")):
        raise SurrogateError(
            f"{directory} has no .safetensors weights; only safetensors are loaded (pickle files can "
            "run code). If you trust the checkpoint, convert it once: "
            f"{cls_name}.from_pretrained(path, use_safetensors=False).save_pretrained(path)")


def weights_sha256(folder: str | Path) -> str:
    """SHA-256 over every safetensors file of a model folder (path-ordered)."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(folder.rglob("*.safetensors"))
    if not files:
        raise SurrogateError(f"no .safetensors weights under {folder}")
    for f in files:
        digest.update(str(f.relative_to(folder)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
