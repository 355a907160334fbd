"""Stable Diffusion victims: LoRA DreamBooth-style fine-tuning on clean vs protected images.

The pixel-space victims of :mod:`.victim` show what happens to a model trained from
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

Nothing is downloaded unless ``model`` is a Hub id and the Hub is reachable; weights
are read as safetensors only.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.devices import resolve_device

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
        tail = self.loss_history[-window:]
        return float(np.mean(tail)) if tail else math.nan


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


def _reset_peak_memory(device: torch.device) -> None:
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
    from ..images import load_image

    if isinstance(images, (str, Path)):
        from .pipeline import load_images

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


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float in [-1, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1)


# ------------------------------------------------------------------ model
def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
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
            "vae": AutoencoderKL.from_pretrained(model, subfolder="vae", **weights, **_dtype_kwarg(weight_dtype)),
            "unet": UNet2DConditionModel.from_pretrained(model, subfolder="unet", **weights,
                                                         **_dtype_kwarg(weight_dtype)),
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


# ------------------------------------------------------------------ training
def train_lora_victim(model: str, images: Sequence[np.ndarray], prompt: str, output_dir: str | Path,
                      settings: DreamBoothSettings, desc: str = "victim", progress: bool = True,
                      components: dict[str, Any] | None = None) -> LoraVictimResult:
    """Fine-tune LoRA adapters of ``model``'s UNet on ``images`` with one instance prompt; save them.

    All randomness (batch order, crops, flips, VAE posterior samples, noise, timesteps, LoRA
    initialisation) comes from ``settings.seed``, so two calls on different images draw the same
    timesteps and noise at every step and their losses compare step by step.
    ``components`` (from :func:`load_components`) is modified in place; pass it only to reuse
    already-loaded weights once.
    """
    from accelerate.state import AcceleratorState, PartialState

    device = resolve_device(settings.device)
    mixed_precision, _ = resolve_precision(settings, device)
    if len(images) == 0:
        raise DreamBoothError("no training images")
    accelerator = _accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision,
                               gradient_accumulation_steps=settings.gradient_accumulation_steps)
    try:
        if accelerator.num_processes > 1:  # every rank would write the same files; the victim is one GPU's job
            raise DreamBoothError("the LoRA victim runs in a single process; start it without a multi-process "
                                  "`accelerate launch` / torchrun")
        return _train_lora(accelerator, model, images, prompt, output_dir, settings, desc, progress, components)
    finally:
        if PartialState().num_processes == 1:  # do not leave this run's precision to later Accelerators
            AcceleratorState._reset_state(reset_partial_state=True)


def _train_lora(accelerator: Any, model: str, images: Sequence[np.ndarray], prompt: str, output_dir: str | Path,
                settings: DreamBoothSettings, desc: str, progress: bool,
                components: dict[str, Any] | None) -> LoraVictimResult:
    import torch.nn.functional as F
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import cast_training_params

    start = time.perf_counter()
    device = resolve_device(settings.device)
    mixed_precision, weight_dtype = resolve_precision(settings, device)
    _reset_peak_memory(device)
    parts = components or load_components(model, settings, weight_dtype)
    tokenizer, text_encoder, vae, unet = parts["tokenizer"], parts["text_encoder"], parts["vae"], parts["unet"]
    noise_scheduler = parts["noise_scheduler"]
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    if settings.vae_slicing:
        vae.enable_slicing()
    if settings.vae_tiling:
        vae.enable_tiling()
    trainable = add_lora(unet, settings)
    # frozen weights in half precision on CUDA; the trainable LoRA weights stay fp32 (the script's recipe)
    dev = accelerator.device
    unet.to(dev)
    vae.to(dev)
    text_encoder.to(dev)
    if weight_dtype != torch.float32:
        cast_training_params(unet, dtype=torch.float32)
    if settings.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    lora_params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(lora_params, lr=settings.learning_rate, betas=(0.9, 0.999),
                                  weight_decay=1e-2, eps=1e-8)
    lr_schedule = get_scheduler("constant_with_warmup" if settings.lr_warmup_steps else "constant", optimizer,
                                num_warmup_steps=settings.lr_warmup_steps * accelerator.num_processes)
    unet, optimizer, lr_schedule = accelerator.prepare(unet, optimizer, lr_schedule)

    with torch.no_grad():  # one prompt: its embedding is computed once (the script's pre-computed embeddings)
        ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(dev)
        prompt_embeds = text_encoder(ids)[0]
    resized = [_to_tensor(resize_shorter_side(a, settings.resolution)) for a in images]
    gen = torch.Generator().manual_seed(settings.seed)
    order: list[int] = []
    losses: list[float] = []
    scaling = vae.config.scaling_factor
    prediction_type = noise_scheduler.config.prediction_type
    unet.train()
    micro_steps = settings.train_steps * settings.gradient_accumulation_steps
    bar = tqdm(total=settings.train_steps, desc=f"LoRA {desc}", disable=not progress, mininterval=2)
    step_losses: list[float] = []
    for _ in range(micro_steps):
        while len(order) < settings.batch_size:  # shuffled epochs, as a DataLoader(shuffle=True) would
            order += torch.randperm(len(resized), generator=gen).tolist()
        batch_idx, order = order[:settings.batch_size], order[settings.batch_size:]
        pixels = torch.stack([_crop(resized[i], settings, gen) for i in batch_idx])
        with accelerator.accumulate(unet):
            with torch.no_grad():
                posterior = vae.encode(pixels.to(dev, dtype=weight_dtype)).latent_dist
                latents = posterior.sample(generator=gen) * scaling
            noise = torch.randn(latents.shape, generator=gen).to(dev, dtype=latents.dtype)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
            t = t.to(dev)
            noisy = noise_scheduler.add_noise(latents, noise, t)
            if prediction_type == "epsilon":
                target = noise
            elif prediction_type == "v_prediction":
                target = noise_scheduler.get_velocity(latents, noise, t)
            else:
                raise DreamBoothError(f"unsupported prediction type {prediction_type!r}")
            embeds = prompt_embeds.expand(latents.shape[0], -1, -1)
            pred = unet(noisy, t, embeds, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(lora_params, settings.max_grad_norm)
            optimizer.step()
            lr_schedule.step()
            optimizer.zero_grad(set_to_none=True)
        step_losses.append(loss.item())
        if accelerator.sync_gradients:
            losses.append(float(np.mean(step_losses)))
            step_losses = []
            bar.update(1)
            if len(losses) % 25 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-25:]):.4f}")
    bar.close()
    memory = peak_memory(device)
    unwrapped = accelerator.unwrap_model(unet)
    output_dir = Path(output_dir)
    save_lora(unwrapped, output_dir)
    seconds = time.perf_counter() - start
    result = LoraVictimResult(lora_dir=str(output_dir), loss_history=losses, seconds=seconds,
                              trainable_parameters=trainable, memory=memory)
    (output_dir / "victim_training.json").write_text(json.dumps({
        "model": str(model), "prompt": prompt, "settings": settings.to_dict(), "num_images": len(images),
        "mixed_precision": mixed_precision, "trainable_parameters": trainable, "loss_history": losses,
        "seconds": round(seconds, 1), "memory": memory}, indent=1))
    logger.info("LoRA victim %s: %d steps on %d images in %.0f s, final loss %.4f, peak %.0f MiB (%s)", desc,
                settings.train_steps, len(images), seconds, result.final_loss(), memory["peak_mib"], memory["device"])
    del optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _accelerator(**kwargs: Any) -> Any:
    """An ``Accelerator``; in a single process, one with other settings may already exist.

    accelerate keeps one process-wide state and refuses a second ``Accelerator`` with another
    device or precision (e.g. after a pixel-victim evaluation in the same Python process). In a
    single process that state holds nothing else, so it is reset; under a multi-process launch
    the refusal stands (the launcher's settings win).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    try:
        return Accelerator(**kwargs)
    except ValueError as exc:
        if "already been initialized" not in str(exc) or PartialState().num_processes > 1:
            raise
        logger.debug("resetting the single-process accelerate state: %s", exc)
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


def _crop(image: torch.Tensor, settings: DreamBoothSettings, gen: torch.Generator) -> torch.Tensor:
    size = settings.resolution
    h, w = image.shape[-2:]
    if settings.center_crop:
        top, left = (h - size) // 2, (w - size) // 2
    else:
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
    out = image[:, top:top + size, left:left + size]
    if settings.random_flip and bool(torch.rand(1, generator=gen) < 0.5):
        out = out.flip(-1)
    return out


# ------------------------------------------------------------------ sampling
def sample_prompts(prompt: str, settings: DreamBoothSettings) -> list[str]:
    """The prompt of each sample: ``sample_prompts`` (or the instance prompt) cycled."""
    prompts = list(settings.sample_prompts) or [prompt]
    return [prompts[i % len(prompts)] for i in range(settings.num_samples)]


@torch.no_grad()
def sample_lora_victim(model: str, lora_dir: str | Path, prompts: Sequence[str], settings: DreamBoothSettings,
                       progress: bool = True) -> np.ndarray:
    """Images from ``StableDiffusionPipeline`` with the LoRA loaded, (N, H, W, 3) uint8.

    Sample i uses a CPU generator seeded ``seed + i`` (independent of device and batch size) and
    a DDIM scheduler built from the model's own scheduler config.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    device = resolve_device(settings.device)
    _, weight_dtype = resolve_precision(settings, device)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model, revision=settings.revision, variant=settings.variant, use_safetensors=True,
            safety_checker=None, **_dtype_kwarg(weight_dtype), feature_extractor=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        raise DreamBoothError(f"cannot load StableDiffusionPipeline from {model!r}: {exc}") from exc
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.load_lora_weights(str(lora_dir), weight_name=LORA_WEIGHT_NAME)
    if settings.vae_slicing:
        pipe.vae.enable_slicing()
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    out = []
    size = settings.resolution
    for start in tqdm(range(0, len(prompts), settings.sample_batch_size), desc="sample", disable=not progress):
        batch = list(prompts[start:start + settings.sample_batch_size])
        gens = [torch.Generator().manual_seed(settings.seed + start + i) for i in range(len(batch))]
        images = pipe(prompt=batch, num_inference_steps=settings.sample_steps, guidance_scale=settings.guidance_scale,
                      generator=gens, height=size, width=size, output_type="np").images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    del pipe
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return np.concatenate(out)


# ------------------------------------------------------------------ evaluation
def pairwise_perturbation_cost(clean: Sequence[np.ndarray], protected: Sequence[np.ndarray]) -> dict[str, float]:
    """PSNR / SSIM (means over images) and max L-inf of protected vs clean, at the images' own sizes.

    Each pair goes through :func:`experiment.perturbation_cost` separately, so images of different
    sizes work; a pair whose sizes differ is refused (the sets must be the same images in order).
    """
    from .experiment import perturbation_cost

    if len(clean) != len(protected):
        raise DreamBoothError(f"--clean has {len(clean)} images but --protected has {len(protected)}; they must "
                              "be the same images in the same order")
    costs = []
    for i, (a, b) in enumerate(zip(clean, protected)):
        if a.shape != b.shape:
            raise DreamBoothError(f"image {i}: clean is {a.shape[1]}x{a.shape[0]} but protected is "
                                  f"{b.shape[1]}x{b.shape[0]}; pair the same images in the same order")
        costs.append(perturbation_cost([a], [b]))
    psnrs = [c["psnr_db"] for c in costs]
    return {"psnr_db": float(np.mean(psnrs)), "psnr_db_min": float(np.min(psnrs)),
            "ssim": float(np.mean([c["ssim"] for c in costs])),
            "linf_levels": int(max(c["linf_levels"] for c in costs))}


def score_victims(samples: dict[str, np.ndarray], training_sets: dict[str, list[np.ndarray]],
                  reference: list[np.ndarray], settings: DreamBoothSettings) -> tuple[dict[str, dict[str, float]],
                                                                                      dict[str, Any]]:
    """Score each victim's samples against the clean subject images (``reference``).

    The feature extractor is fitted on the clean images only. With 5-20 images the whitening has
    few samples, so unless ``feature_kwargs`` sets it, ``block_dim`` keeps about one feature per
    four images (at least one per block): FD is still noisy at these sizes and only the ratio
    between the two victims, scored by the same extractor, means anything.
    """
    from .experiment import EvalSettings, Scorer

    kwargs = dict(settings.feature_kwargs)
    if settings.feature == "fitted" and "block_dim" not in kwargs:
        kwargs["block_dim"] = int(max(1, min(4, len(reference) // (4 * 13))))
    scorer = Scorer(reference, reference, EvalSettings(feature=settings.feature, feature_kwargs=kwargs,
                                                       seed=settings.seed))
    scores: dict[str, dict[str, float]] = {}
    for name, imgs in samples.items():
        s = scorer.score(list(imgs))
        # the victim's own training images: what a perfect copy of its training data would score
        s["training_data_fd"] = scorer.score(training_sets[name])["fd"]
        scores[name] = s
    base = scores["clean"]["fd"]
    for s in scores.values():
        s["fd_ratio_vs_clean"] = s["fd"] / base if base > 0 else math.inf
    info = {"feature": settings.feature, "feature_kwargs": kwargs, "reference_images": len(reference)}
    return scores, info


def evaluate_dreambooth(model: str, clean_images: ImageInput, protected_images: ImageInput, prompt: str,
                        out_dir: str | Path, settings: DreamBoothSettings | None = None,
                        progress: bool = True) -> dict[str, Any]:
    """Train one LoRA victim on the clean and one on the protected images (same recipe and seed),
    sample both, score the samples against the clean images, and write the report.

    ``out_dir`` gets ``report.json``, ``report.md``, ``comparison.png`` (training images and both
    victims' samples side by side), ``loss_curves.png`` and ``victims/{clean,protected}/`` (LoRA
    weights, ``samples.png``, ``victim_training.json``). Returns the report dict.
    """
    from ..jobs.dataset_job import library_versions
    from .report import loss_plot, verdict

    settings = settings or DreamBoothSettings()
    start = time.perf_counter()
    clean = load_subject_images(clean_images)
    protected = load_subject_images(protected_images)
    cost = pairwise_perturbation_cost(clean, protected)
    if len(clean) < 3:
        raise DreamBoothError(f"need at least 3 subject images to score the victims, got {len(clean)}")
    if settings.num_samples < 2:
        raise DreamBoothError("num_samples must be >= 2 (a Fréchet distance needs a covariance)")
    device = resolve_device(settings.device)
    mixed_precision, _ = resolve_precision(settings, device)  # refuse bad settings before any training
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = settings.resolution
    views = {"clean": training_view(clean, size), "protected": training_view(protected, size)}
    prompts = sample_prompts(prompt, settings)
    samples: dict[str, np.ndarray] = {}
    victims: dict[str, dict[str, Any]] = {}
    losses: dict[str, list[float]] = {}
    for name, imgs in (("clean", clean), ("protected", protected)):
        victim_start = time.perf_counter()
        victim_dir = out_dir / "victims" / name
        result = train_lora_victim(model, imgs, prompt, victim_dir, settings, desc=name, progress=progress)
        _reset_peak_memory(device)
        samples[name] = sample_lora_victim(model, result.lora_dir, prompts, settings, progress=progress)
        sampling_memory = peak_memory(device)
        np.savez_compressed(victim_dir / "samples.npz", samples=samples[name])
        _grid({"samples": samples[name]}, victim_dir / "samples.png")
        losses[name] = result.loss_history
        victims[name] = {"final_train_loss": result.final_loss(), "trainable_parameters": result.trainable_parameters,
                         "train_seconds": round(result.seconds, 1),
                         "seconds": round(time.perf_counter() - victim_start, 1),
                         "peak_memory_train_mib": result.memory["peak_mib"],
                         "peak_memory_sample_mib": sampling_memory["peak_mib"],
                         "lora_weights": str(Path(result.lora_dir) / LORA_WEIGHT_NAME)}
    scores, feature_info = score_victims(samples, views, views["clean"], settings)
    for name in victims:
        victims[name] = {**scores[name], **victims[name]}
    memory = {k: v for k, v in peak_memory(device).items() if k != "peak_mib"}
    report: dict[str, Any] = {
        "kind": "stable-diffusion-lora-dreambooth",
        "model": str(model), "prompt": prompt, "sample_prompts": sorted(set(prompts)),
        "settings": settings.to_dict(), "mixed_precision": mixed_precision,
        "data": {"images": len(clean), "resolution": size, "scored_against": "the clean subject images"},
        "perturbation": {"protected": cost}, "victims": victims, "scoring": feature_info,
        "memory": {**memory, "note": _memory_note(device)},
        "notes": [f"FD over {settings.num_samples} samples against {len(clean)} subject images is noisy: "
                  "only the ratio between the two victims, scored by the same extractor, is meaningful, and "
                  "a ratio near 1 is within noise.",
                  "Both victims draw identical timesteps and noise at every training step, so their "
                  "final losses compare directly."],
        "verdict": verdict(victims),
        "seconds": round(time.perf_counter() - start, 1),
        "versions": {**library_versions(), "python": platform.python_version()},
    }
    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"),
             "comparison": str(out_dir / "comparison.png"), "loss_curves": str(out_dir / "loss_curves.png")}
    report["files"] = files
    n = min(len(clean), settings.num_samples)
    _grid({"training: clean": np.stack(views["clean"][:n]), "training: protected": np.stack(views["protected"][:n]),
           "victim: clean-trained": samples["clean"], "victim: protected-trained": samples["protected"]},
          Path(files["comparison"]))
    loss_plot(losses, Path(files["loss_curves"]), window=max(1, min(50, settings.train_steps // 8)))
    from .report import _json_default

    Path(files["json"]).write_text(json.dumps(report, indent=2, default=_json_default))
    Path(files["markdown"]).write_text(render_markdown(report))
    logger.info("SD evaluation written to %s (%.0f s)", out_dir, report["seconds"])
    return report


def _memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated, reset before each victim's training and sampling "
                "(tensors only; nvidia-smi shows more: the CUDA context and allocator cache)")
    return ("CPU run: peak RSS of the whole Python process (resource.ru_maxrss; it cannot be reset, so "
            "later numbers include earlier ones). Not a GPU memory measurement.")


def _grid(panels: dict[str, np.ndarray], path: Path, cell: int = 128) -> Path:
    """Side-by-side grids; large images are downscaled with a box filter first (nearest is ugly)."""
    from PIL import Image

    from .report import side_by_side_grids

    n = max(len(v) for v in panels.values())
    cols = min(4, n)
    rows = math.ceil(n / cols)
    small = {}
    for name, imgs in panels.items():
        small[name] = np.stack([np.asarray(Image.fromarray(a).resize((cell, cell), Image.Resampling.BOX))
                                if a.shape[0] != cell else a for a in imgs])
    return side_by_side_grids(small, path, rows=rows, cols=cols, cell=cell)


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown; every number comes from ``report`` (report.json), formatted once."""
    from .report import fmt, results_table

    s = report["settings"]
    victims = report["victims"]
    cost = report["perturbation"]["protected"]
    mem = report["memory"]
    lines = ["# Stable Diffusion LoRA (DreamBooth-style) evaluation", "",
             f"Base model `{report['model']}`; LoRA rank {s['lora_rank']} on the UNet attention projections, "
             f"{s['train_steps']} steps at {s['resolution']} px, batch {s['batch_size']}, learning rate "
             f"{s['learning_rate']}, mixed precision `{report['mixed_precision']}`, seed {s['seed']}; instance "
             f"prompt \"{report['prompt']}\". Each victim trained on {report['data']['images']} images and drew "
             f"{s['num_samples']} samples (DDIM, {s['sample_steps']} steps, guidance {s['guidance_scale']}, "
             f"CPU generators seeded {s['seed']}..{s['seed'] + s['num_samples'] - 1}).", "",
             f"Scored against {report['scoring']['reference_images']} clean subject images with the "
             f"`{report['scoring']['feature']}` feature extractor ({report['scoring']['feature_kwargs']}).", ""]
    lines += [f"> {note}" for note in report["notes"]] + [""]
    if report["scoring"]["feature"] == "fitted":
        lines += ["FD uses a feature extractor fitted on the clean images only: it is not FID.", ""]
    lines += ["## Victims", "", results_table(victims), "",
              "| victim | trainable LoRA parameters | training s | peak memory, training (MiB) | "
              "peak memory, sampling (MiB) |", "|---|---|---|---|---|"]
    for name, v in victims.items():
        lines.append(f"| {name} | {v['trainable_parameters']} | {fmt(v['train_seconds'], '{:.1f}')} | "
                     f"{fmt(v['peak_memory_train_mib'], '{:.1f}')} | {fmt(v['peak_memory_sample_mib'], '{:.1f}')} |")
    lines += ["", f"Memory ({mem['device']}): {mem['note']}", "",
              f"- perturbation `protected`: PSNR {fmt(cost['psnr_db'], '{:.2f}')} dB (mean; min "
              f"{fmt(cost['psnr_db_min'], '{:.2f}')}), SSIM {fmt(cost['ssim'], '{:.4f}')}, "
              f"max L-inf {cost['linf_levels']} levels", "",
              "## Verdict", "", report["verdict"], "",
              "![training images and samples](comparison.png)", "", "![loss curves](loss_curves.png)", ""]
    return "\n".join(lines)
