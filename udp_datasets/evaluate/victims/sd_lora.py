"""Stable Diffusion victims: LoRA DreamBooth-style fine-tuning on clean vs protected images.

The pixel-space victims of :mod:`.pixel` show what happens to a model trained from
scratch. The threat people actually face is different: someone takes a pretrained
Stable Diffusion, fine-tunes LoRA adapters on 5-20 pictures of one person or one
artist's style with an instance prompt ("a photo of sks person"), and generates new
pictures. This module reproduces that recipe after diffusers'
``examples/dreambooth/train_dreambooth_lora.py`` (frozen VAE and CLIP text encoder,
LoRA on the UNet attention projections via ``peft``, AdamW, epsilon / v-prediction
loss, accelerate, optional mixed precision, gradient checkpointing, VAE slicing /
tiling) so that a clean-trained and a protected-trained victim differ only in their
training images: same base model, same seed, same LoRA initialisation, same timesteps
and noise at every step, same sampling prompts and seeds.

This module holds the recipe (:class:`DreamBoothSettings`), the model parts (load, add and
save LoRA), the images as the victim sees them, precision and memory; training is in
:mod:`.sd_lora_training`, sampling in :mod:`.sd_lora_sampling`, the ``evaluate-sd`` run and its
report in :mod:`..experiments.evaluate_sd_command`.

Nothing is downloaded unless ``model`` is a Hub id and the Hub is reachable; weights
are read as safetensors only.
"""

from __future__ import annotations

import logging
import resource
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np
import torch

from ...images import load_image
from ..data import load_images
from .pixel import final_loss

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_TARGET_MODULES = ("to_k", "to_q", "to_v", "to_out.0")
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
ImageInput = Union[str, Path, Sequence[Union[np.ndarray, str, Path]]]


class DreamBoothError(ValueError):
    """Bad input to the Stable Diffusion evaluation (model, images, settings); the message says the fix."""


@dataclass(frozen=True)
class DreamBoothSettings:
    """One LoRA DreamBooth recipe, applied identically to the clean and the protected images.

    Defaults follow diffusers' ``train_dreambooth_lora.py`` README example for SD 1.x
    (512 px, batch 1, rank 4, constant learning rate) with 400 steps, a common
    choice for 5-20 subject images.
    """

    resolution: int = 512
    train_steps: int = 400
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    lora_rank: int = 4
    lora_alpha: int | None = None
    """LoRA scaling numerator; ``None`` means equal to the rank (scale 1), as the script does."""
    center_crop: bool = True
    """Center-crop after resizing the shorter side (``False``: random crops, like the script's default)."""
    random_flip: bool = False
    mixed_precision: MixedPrecision = "auto"
    """``auto``: fp16 on CUDA, none on CPU. ``fp16``/``bf16`` need CUDA."""
    gradient_checkpointing: bool = False
    vae_slicing: bool = False
    vae_tiling: bool = False
    num_samples: int = 8
    sample_prompts: tuple[str, ...] = ()
    """Prompts cycled over the samples; empty means the instance prompt only."""
    sample_steps: int = 30
    guidance_scale: float = 7.5
    sample_batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    revision: str | None = None
    variant: str | None = None
    """Weight file variant of the model (e.g. ``fp16`` for ``*.fp16.safetensors``)."""
    feature: str = "fitted"
    feature_kwargs: dict[str, Any] = field(default_factory=dict)
    """Extractor options; without ``block_dim`` it is chosen from the number of images (see :func:`score_victims`)."""

    def __post_init__(self) -> None:
        positive = ("resolution", "train_steps", "batch_size", "gradient_accumulation_steps", "lora_rank",
                    "num_samples", "sample_steps", "sample_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise DreamBoothError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.resolution % 8:
            raise DreamBoothError(f"resolution must be a multiple of 8 (the VAE downsamples 8x), got {self.resolution}")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise DreamBoothError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}")
        if self.learning_rate <= 0:
            raise DreamBoothError(f"learning_rate must be > 0, got {self.learning_rate}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sample_prompts"] = list(self.sample_prompts)
        return d


@dataclass
class LoraVictimResult:
    """What one LoRA fine-tuning run produced."""

    lora_dir: str
    loss_history: list[float] = field(default_factory=list)
    seconds: float = 0.0
    trainable_parameters: int = 0
    memory: dict[str, Any] = field(default_factory=dict)

    def final_loss(self, window: int = 100) -> float:
        return final_loss(self.loss_history, window)


# ------------------------------------------------------------------ devices and memory
def resolve_precision(settings: DreamBoothSettings, device: torch.device) -> tuple[str, torch.dtype]:
    """(accelerate's mixed_precision, dtype of the frozen weights). Half precision only on CUDA:
    CPU half-precision kernels are slow or missing, so CPU runs in fp32."""
    mp = settings.mixed_precision
    if mp == "auto":
        mp = "fp16" if device.type == "cuda" else "no"
    if mp != "no" and device.type != "cuda":
        raise DreamBoothError(f"mixed precision {mp} needs a CUDA device (this run is on {device}); "
                              "use --mixed-precision no on CPU")
    if mp == "bf16" and not torch.cuda.is_bf16_supported():
        raise DreamBoothError("this GPU does not support bf16; use --mixed-precision fp16")
    return mp, {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mp]


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory since the last reset: CUDA allocator peak, or (CPU) the process's peak RSS.

    The CPU number is ``ru_maxrss`` of the whole Python process since it started (it cannot be
    reset), so it includes everything loaded before this run; it is not a GPU memory figure.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        return {"device": "cuda", "measure": "torch.cuda.max_memory_allocated",
                "peak_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
                "gpu": torch.cuda.get_device_name(device)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB, macOS bytes
    return {"device": "cpu", "measure": "process peak RSS (resource.ru_maxrss, whole process, CPU)",
            "peak_mib": round(rss_bytes / 2**20, 1)}


# ------------------------------------------------------------------ images
def load_subject_images(images: ImageInput, image_column: str = "image", limit: int | None = None) -> list[np.ndarray]:
    """A folder / dataset (anything ``udp-datasets evaluate`` reads), or a list of arrays or paths,
    as (H, W, 3) uint8 arrays in order."""
    if isinstance(images, (str, Path)):
        out = load_images(str(images), image_column, limit)
    else:
        out = []
        for i, item in enumerate(images):
            if isinstance(item, np.ndarray):
                out.append(np.asarray(item, dtype=np.uint8))
            else:
                out.append(load_image(Path(item).read_bytes(), key=str(item)).pixels)
        out = out[:limit] if limit is not None else out
    if not out:
        raise DreamBoothError(f"no images in {images if isinstance(images, (str, Path)) else 'the list'}")
    return [np.repeat(a, 3, axis=2) if a.ndim == 3 and a.shape[2] == 1 else a[:, :, :3] for a in out]


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size`` (bilinear, antialiased), keeping the aspect ratio."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = size / min(h, w)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new == (w, h):
        return image
    return np.asarray(Image.fromarray(image).resize(new, Image.Resampling.BILINEAR, reducing_gap=None))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top:top + size, left:left + size]


def training_view(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """The images as the victim sees them without augmentation: shorter side resized, center crop."""
    return [center_crop(resize_shorter_side(a, size), size) for a in images]


# ------------------------------------------------------------------ model
def dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (0.36-ish); older releases only know the old name."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return {"torch_dtype": dtype}
    return {"dtype": dtype}


def load_components(model: str, settings: DreamBoothSettings,
                    weight_dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """Tokenizer, CLIP text encoder, VAE, UNet2DConditionModel and DDPM noise scheduler of an SD model.

    The VAE and UNet are loaded directly in ``weight_dtype`` (diffusers keeps the modules that
    must stay fp32 in fp32); the text encoder is cast after loading.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw = {"revision": settings.revision}
    weights = {**kw, "variant": settings.variant, "use_safetensors": True}
    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw),
            "text_encoder": CLIPTextModel.from_pretrained(model, subfolder="text_encoder", **weights
                                                          ).to(weight_dtype),
            "vae": AutoencoderKL.from_pretrained(model, subfolder="vae", **weights, **dtype_kwarg(weight_dtype)),
            "unet": UNet2DConditionModel.from_pretrained(model, subfolder="unet", **weights,
                                                         **dtype_kwarg(weight_dtype)),
            "noise_scheduler": DDPMScheduler.from_pretrained(model, subfolder="scheduler", **kw),
        }
    except (OSError, ValueError) as exc:
        raise DreamBoothError(
            f"cannot load a Stable Diffusion model from {model!r}: {exc}. Give a folder in the diffusers "
            "layout (tokenizer/, text_encoder/, vae/, unet/, scheduler/) with safetensors weights, e.g. "
            "StableDiffusionPipeline.save_pretrained(DIR), or a Hub id that is cached or reachable"
        ) from exc


def add_lora(unet: Any, settings: DreamBoothSettings) -> int:
    """Add LoRA adapters to the UNet's attention projections (seeded: both victims start identical).

    Returns the number of trainable parameters; everything else in the UNet is frozen.
    """
    from peft import LoraConfig

    unet.requires_grad_(False)
    config = LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha or settings.lora_rank,
                        init_lora_weights="gaussian", target_modules=list(LORA_TARGET_MODULES))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        unet.add_adapter(config)
    return sum(p.numel() for p in unet.parameters() if p.requires_grad)


def save_lora(unet: Any, output_dir: str | Path) -> Path:
    """Write the UNet's LoRA weights in diffusers' format (``pipe.load_lora_weights`` reads it)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        output_dir, unet_lora_layers=layers, safe_serialization=True, weight_name=LORA_WEIGHT_NAME,
        unet_lora_adapter_metadata=unet.peft_config["default"].to_dict())
    return output_dir / LORA_WEIGHT_NAME
