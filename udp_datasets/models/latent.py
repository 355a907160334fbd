"""Latent surrogates: Stable Diffusion folders and bare VAE + UNet2DModel pairs.

The denoiser of a latent diffusion model never sees pixels: it is trained on
``z = (E(x) - shift) * scale`` (:class:`LatentNormalisation`: SD's scalar ``scaling_factor`` or
per-channel statistics). A perturbation therefore acts through the VAE
encoder, which can turn a delta within 8/255 into a large shift of z (the
amplification issue #7 measures). :class:`LatentSurrogate` keeps the same
interface as the pixel :class:`~udp_datasets.models.base.Surrogate` (``to_model_space``,
``denoising_loss``) so PGD, the objectives, EUDP (on the latent scheduler's
alphas) and fit run unchanged; it adds ``encode`` for the encoder objective and the
text condition of a ``UNet2DConditionModel``.

The VAE is an ``AutoencoderKL`` (Stable Diffusion) or a tiny autoencoder (diffusers'
``AutoencoderTiny``, or the pooled TAEF2 variant of :mod:`.tiny_autoencoder`, a real pretrained
encoder that runs on a CPU). An ``AutoencoderKL`` is encoded to its posterior *mean* (not a
sample): deterministic, and the difference is the VAE's small posterior noise, which SD-style
VAEs keep tiny; a tiny autoencoder returns its latents directly.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .base import (Surrogate, SurrogateError, SurrogateRef, component_dir, require_safetensors,
                        weights_sha256)

logger = logging.getLogger(__name__)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


class LatentSurrogate(Surrogate):
    """VAE (frozen) + latent denoiser (+ CLIP text encoder for Stable Diffusion)."""

    kind = "latent"

    def __init__(self, unet: torch.nn.Module, scheduler: Any, ref: SurrogateRef, vae: torch.nn.Module,
                 text_encoder: torch.nn.Module | None = None, tokenizer: Any = None):
        super().__init__(unet, scheduler, ref)
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.conditional = getattr(unet.config, "cross_attention_dim", None) is not None
        if self.conditional and (text_encoder is None or tokenizer is None):
            raise SurrogateError("a text-conditioned UNet needs text_encoder/ and tokenizer/ beside it")
        self.normalisation = latent_normalisation(vae.config)
        blocks = getattr(vae.config, "block_out_channels", None) or vae.config.encoder_block_out_channels
        factor = 2 ** (len(blocks) - 1)  # AutoencoderKL, or AutoencoderTiny and its pooled variant
        self.vae_factor = factor
        self.image_size = (self.sample_size[0] * factor, self.sample_size[1] * factor)
        self.image_channels = vae.config.in_channels
        if vae.config.latent_channels != self.in_channels:
            raise SurrogateError(f"the VAE makes {vae.config.latent_channels}-channel latents but the UNet "
                                 f"expects {self.in_channels} input channels")
        self._text_cache: dict[tuple[str, str, str], torch.Tensor] = {}

    # ---------------------------------------------------------------- devices
    def modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.vae, self.text_encoder) if m is not None]

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "LatentSurrogate":
        for m in self.modules():
            m.to(device)
            if next(m.parameters()).dtype != dtype:
                m.to(dtype)
        self._abar_device = None
        self._text_cache.clear()
        return self

    def freeze(self) -> "LatentSurrogate":
        for m in self.modules():
            m.eval()
            m.requires_grad_(False)
        return self

    def enable_memory_savers(self) -> None:
        """Gradient checkpointing in UNet and VAE, VAE slicing: large images on small GPUs."""
        for m in (self.unet, self.vae):
            if getattr(m, "_supports_gradient_checkpointing", False):
                m.enable_gradient_checkpointing()
        if hasattr(self.vae, "enable_slicing"):
            self.vae.enable_slicing()

    # ------------------------------------------------------------ the maths
    def encode(self, x01: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] at any size -> scaled latents (differentiable w.r.t. the pixels)."""
        x = self.fit_pixels(x01)
        dtype = next(self.vae.parameters()).dtype
        encoded = self.vae.encode(x.to(dtype) * 2 - 1)
        # AutoencoderKL: the posterior mean (deterministic); tiny autoencoders return latents directly
        latents = encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
        return self.normalisation.normalise(latents)

    def to_model_space(self, x01: torch.Tensor) -> torch.Tensor:
        return self.encode(x01)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [0, 1] (for reports and amplification measurements)."""
        dtype = next(self.vae.parameters()).dtype
        x = self.vae.decode(self.normalisation.denormalise(z).to(dtype)).sample
        return ((x.float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """CLIP hidden states for each prompt (cached: datasets repeat a few templates)."""
        if not self.conditional:
            raise SurrogateError("this surrogate's UNet is unconditional; it takes no prompt")
        device = next(self.text_encoder.parameters()).device
        dtype = next(self.unet.parameters()).dtype
        out = []
        for prompt in prompts:
            key = (prompt, str(device), str(dtype))
            if key not in self._text_cache:
                ids = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                                     truncation=True, return_tensors="pt").input_ids.to(device)
                self._text_cache[key] = self.text_encoder(ids)[0].to(dtype)
            out.append(self._text_cache[key])
        return torch.cat(out)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        if self.conditional and cond is None:
            raise SurrogateError("a text-conditioned surrogate needs a prompt: set ProtectionConfig.prompt "
                                 "(--prompt) or caption_column (--caption-column)")
        return super().predict(x_t, t, cond if self.conditional else None, params)

    # ------------------------------------------------------------ training
    def add_lora(self, rank: int) -> list[torch.nn.Parameter]:
        """LoRA adapters (peft) on the UNet's attention projections; returns the trainable params.

        ``inject_adapter_in_model`` works for UNet2DModel too (it has no diffusers
        ``add_adapter``), so both latent layouts share one path.
        """
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise SurrogateError("fit_lora_rank > 0 needs peft: pip install 'udp-datasets[sd]'") from exc
        self.unet.requires_grad_(False)
        targets = {name.rsplit(".", 1)[-1] for name, _ in self.unet.named_modules()}
        if not {"to_q", "to_k", "to_v"} & targets:
            raise SurrogateError("the UNet has no attention projections for LoRA (to_q/to_k/to_v/to_out.0); "
                                 "use fit_lora_rank=0 to fine-tune it fully")
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                           target_modules=LORA_TARGETS), self.unet)
        return [p for name, p in self.unet.named_parameters() if "lora_" in name]

    def merge_lora(self) -> None:
        """Fold trained adapters into the weights, so the saved UNet is a plain diffusers model."""
        from importlib.util import find_spec

        if find_spec("peft") is None:
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(self.unet.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent_name, _, child = name.rpartition(".")
                parent = self.unet.get_submodule(parent_name) if parent_name else self.unet
                setattr(parent, child, module.get_base_layer())

    # -------------------------------------------------------------- storage
    def save(self, directory: str | Path) -> SurrogateRef:
        """Save in the layout it was loaded from (SD pipeline or latent pair), adapters merged."""
        self.merge_lora()
        return super().save(directory)

    def _write(self, directory: Path) -> None:
        if self.conditional:
            from diffusers import StableDiffusionPipeline

            StableDiffusionPipeline(
                vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                scheduler=self.scheduler, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False).save_pretrained(directory, safe_serialization=True)
        else:
            save_latent_pair(directory, self.vae, self.unet, self.scheduler)


@dataclass(frozen=True)
class LatentNormalisation:
    """The model space of a latent pair: ``z = (E(x) - shift) * scale``, read from the VAE's own config.

    Two conventions, so a saved pair needs nothing beside its VAE config:

    - one scalar pair, ``shift_factor`` / ``scaling_factor`` (Stable Diffusion, FLUX.1): Python floats,
      so the arithmetic (and every output byte) is what it was before per-channel statistics existed;
    - per channel, ``latents_mean`` / ``latents_std`` (diffusers' AutoencoderKL names; FLUX.2 standardises
      each latent channel with its batch-norm statistics): ``scale = scaling_factor / latents_std``.
      Why: with one scalar, channels of small variance are mostly noise to a denoiser trained on them.
    """

    shift: float | torch.Tensor
    scale: float | torch.Tensor

    @property
    def per_channel(self) -> bool:
        return isinstance(self.shift, torch.Tensor)

    def _cast(self, value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
        return value.to(like.device, like.dtype) if isinstance(value, torch.Tensor) else value

    def normalise(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self._cast(self.shift, latents)) * self._cast(self.scale, latents)

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z / self._cast(self.scale, z) + self._cast(self.shift, z)


def latent_normalisation(vae_config: Any) -> LatentNormalisation:
    """The :class:`LatentNormalisation` a VAE config declares (per channel when it has ``latents_mean``
    and ``latents_std``, else the scalar ``shift_factor`` / ``scaling_factor``)."""
    channels = int(vae_config.latent_channels)
    factor = float(getattr(vae_config, "scaling_factor", 1.0) or 1.0)
    mean, std = getattr(vae_config, "latents_mean", None), getattr(vae_config, "latents_std", None)
    if mean is not None and std is not None:
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise SurrogateError(f"the VAE config's latents_mean / latents_std need {channels} values each "
                                 f"(std > 0); got {len(mean)} / {len(std)}")
        shift = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        return LatentNormalisation(shift, factor / torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    shift_factor = getattr(vae_config, "shift_factor", None)
    return LatentNormalisation(float(shift_factor) if shift_factor is not None else 0.0, factor)


def sd_scheduler(num_train_timesteps: int = 1000):
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085 to 0.012, no clipping)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", steps_offset=1, clip_sample=False)


def save_latent_pair(directory: str | Path, vae: Any, unet: Any, scheduler: Any = None) -> Path:
    """Write a bare latent pair: ``vae/`` (AutoencoderKL or a tiny autoencoder), ``unet/`` (UNet2DModel),
    ``scheduler/``.

    ``model_index.json`` names the parts so the folder is recognisable; it is not a
    diffusers pipeline class (diffusers has none for AutoencoderKL + UNet2DModel).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(directory / "vae", safe_serialization=True)
    unet.save_pretrained(directory / "unet", safe_serialization=True)
    (scheduler or sd_scheduler()).save_pretrained(directory / "scheduler")
    (directory / "model_index.json").write_text(json.dumps({
        "_class_name": "UDPLatentPair", "vae": ["diffusers", type(vae).__name__],
        "unet": ["diffusers", type(unet).__name__], "scheduler": ["diffusers", "DDPMScheduler"]}, indent=2))
    return directory


def load_latent_surrogate(folder: Path, source: str, revision: str | None) -> LatentSurrogate:
    """Load a Stable Diffusion folder (vae, unet, text_encoder, tokenizer, scheduler) or a latent pair."""
    from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

    from .tiny_autoencoder import load_autoencoder

    parts = {name: component_dir(folder, name) for name in ("vae", "unet", "scheduler")}
    for name in ("vae", "unet"):
        if parts[name] == folder or not (parts[name] / "config.json").exists():
            raise SurrogateError(f"latent surrogate {source!r}: no {name}/config.json in {folder}")
        require_safetensors(parts[name], "AutoencoderKL" if name == "vae" else "UNet2DConditionModel")
    if not (parts["scheduler"] / "scheduler_config.json").exists():
        raise SurrogateError(f"latent surrogate {source!r}: no scheduler/scheduler_config.json in {folder}")
    if (folder / "text_encoder_2").exists():
        raise SurrogateError(f"{source!r} has two text encoders (SDXL-style); only Stable Diffusion 1.x/2.x "
                             "style pipelines (one CLIP text encoder) are supported")
    unet_config = json.loads((parts["unet"] / "config.json").read_text())
    cls_name = unet_config.get("_class_name", "UNet2DModel")
    if unet_config.get("addition_embed_type"):
        raise SurrogateError(f"{source!r}: UNet with added conditioning ({unet_config['addition_embed_type']!r}, "
                             "e.g. SDXL) is not supported")
    unet_cls = {"UNet2DConditionModel": UNet2DConditionModel, "UNet2DModel": UNet2DModel}.get(cls_name)
    if unet_cls is None:
        raise SurrogateError(f"{source!r}: unsupported latent UNet class {cls_name!r} "
                             "(UNet2DConditionModel or UNet2DModel)")
    text_encoder = tokenizer = None
    try:
        vae = load_autoencoder(parts["vae"])  # AutoencoderKL, AutoencoderTiny or the pooled (TAEF2) variant
        unet = unet_cls.from_pretrained(parts["unet"], use_safetensors=True)
        scheduler = DDPMScheduler.from_pretrained(parts["scheduler"])
        if cls_name == "UNet2DConditionModel":
            text_encoder, tokenizer = _load_text_encoder(folder, source)
    except (OSError, ValueError, KeyError) as exc:
        raise SurrogateError(f"could not load latent surrogate from {folder}: {exc}") from exc
    ref = SurrogateRef(kind="latent", source=source, revision=revision, sha256=weights_sha256(folder),
                       architecture=cls_name)
    logger.info("loaded latent surrogate %s (%s, sha256 %s)", source, cls_name, ref.sha256[:12])
    surrogate = LatentSurrogate(unet, scheduler, ref, vae, text_encoder, tokenizer)
    surrogate.load_extras(folder)
    return surrogate


def _load_text_encoder(folder: Path, source: str):
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SurrogateError("Stable Diffusion surrogates need transformers: pip install 'udp-datasets[sd]'") from exc
    enc_dir, tok_dir = folder / "text_encoder", folder / "tokenizer"
    if not (enc_dir / "config.json").exists() or not tok_dir.is_dir():
        raise SurrogateError(f"{source!r} has a text-conditioned UNet but no text_encoder/ or tokenizer/")
    require_safetensors(enc_dir, "CLIPTextModel")
    return CLIPTextModel.from_pretrained(enc_dir, use_safetensors=True), CLIPTokenizer.from_pretrained(tok_dir)


# ------------------------------------------------------------------ prompts
def prompts_for(template: str | None, captions: Sequence[str | None] | None, n: int) -> list[str]:
    """One prompt per image: the template with ``{caption}`` filled, or the captions themselves."""
    if template is None and captions is None:
        raise SurrogateError("a text-conditioned surrogate needs a prompt: pass --prompt 'a photo of sks person' "
                             "or --caption-column NAME")
    if captions is not None and len(captions) != n:
        raise ValueError(f"{len(captions)} captions for {n} images")
    text = template if template is not None else "{caption}"
    if "{caption}" in text and captions is None:
        raise SurrogateError(f"prompt {text!r} uses {{caption}} but no caption_column was given")
    if captions is None:
        return [text] * n
    return [text.replace("{caption}", "" if c is None else str(c)) for c in captions]


# ------------------------------------------------------------------ target
def target_pattern(height: int, width: int, channels: int = 3, period: int = 8) -> np.ndarray:
    """A built-in high-contrast pattern (uint8): the default latent target of ``encoder_target='pattern'``.

    Mist and PhotoGuard pull latents toward a fixed textured target so that a model
    trained on them reproduces the texture; concentric rings with a checker mix give
    energy at every orientation and several frequencies.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rings = np.sin(np.hypot(yy - height / 2, xx - width / 2) * 2 * np.pi / period)
    checker = np.sign(np.sin(yy * np.pi / period) * np.sin(xx * np.pi / period))
    base = 0.5 + 0.25 * rings + 0.25 * checker
    shifts = np.linspace(0, np.pi, channels, endpoint=False)
    out = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * base + s) for s in shifts], axis=-1)
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def load_target(path: str | None, height: int, width: int, channels: int) -> torch.Tensor:
    """The target image as (1, C, H, W) in [0, 1]: a file resized to the image, or the pattern."""
    if path is None:
        arr = target_pattern(height, width, channels)
    else:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if channels == 3 else "L").resize((width, height), Image.Resampling.BICUBIC)
                arr = np.asarray(img, dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise SurrogateError(f"target_image {path!r} could not be read: {exc}") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
