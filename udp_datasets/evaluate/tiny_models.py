"""Tiny latent diffusion models built in code: for tests, demos and offline experiments.

No pretrained weights can be downloaded on an offline machine, yet the latent code
path (``from_pretrained`` of a Stable Diffusion folder: VAE, UNet2DConditionModel,
CLIP text encoder + tokenizer, scheduler) must be exercised for real. These builders
make randomly initialised, seconds-to-run versions of each component with the real
classes, and save them in exactly the layout diffusers writes, so every loader in
the package runs unchanged on them.

The CLIP tokenizer is a character-level BPE vocabulary (no merges) written here, so
no tokenizer files need to be fetched.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.latent import save_latent_pair, sd_scheduler


def build_vae(block_out_channels: tuple[int, ...], latent_channels: int = 4, layers_per_block: int = 1,
              norm_num_groups: int = 8, sample_size: int = 32, seed: int = 0):
    """A seeded SD-shaped ``AutoencoderKL``: one encoder/decoder level per channel entry, so
    ``len(block_out_channels)`` levels downsample ``2 ** (levels - 1)`` times (SD: 4 levels, 8x)."""
    from diffusers import AutoencoderKL

    levels = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=latent_channels,
            block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups, down_block_types=("DownEncoderBlock2D",) * levels,
            up_block_types=("UpDecoderBlock2D",) * levels, sample_size=sample_size)


def build_tiny_vae(latent_channels: int = 4, downsample: int = 8, seed: int = 0,
                   block_out_channels: tuple[int, ...] | None = None):
    """A tiny ``AutoencoderKL`` with ``downsample``-x spatial reduction (SD uses 8)."""
    levels = int(downsample).bit_length()  # 8 -> 4 blocks (3 downsamplings)
    if 2 ** (levels - 1) != downsample:
        raise ValueError(f"downsample={downsample} must be a power of two")
    channels = block_out_channels or tuple([8, 16, 16, 16, 32, 32][:levels])
    if len(channels) != levels:
        raise ValueError(f"{downsample}x downsampling needs {levels} block_out_channels, got {channels}")
    return build_vae(channels, latent_channels, norm_num_groups=min(8, channels[0]),
                     sample_size=32 * downsample // 8, seed=seed)


def build_tiny_latent_unet(sample_size: int = 4, channels: int = 4, seed: int = 0):
    """An unconditional latent ``UNet2DModel`` (the bare latent pair's denoiser)."""
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                           block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def build_tiny_conditional_unet(sample_size: int = 4, channels: int = 4, cross_attention_dim: int = 32,
                                seed: int = 0):
    """A text-conditioned ``UNet2DConditionModel`` shaped like SD's, a few thousand times smaller."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=channels, out_channels=channels,
            block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=cross_attention_dim, attention_head_dim=8)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def save_tiny_clip_tokenizer(directory: str | Path, max_length: int = 16):
    """A character-level ``CLIPTokenizer`` (every byte, with and without ``</w>``; no merges)."""
    from transformers import CLIPTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab_list)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"),
                              model_max_length=max_length)
    tokenizer.save_pretrained(directory)
    return tokenizer


def build_tiny_text_encoder(vocab_size: int, hidden_size: int = 32, max_length: int = 16, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=max_length,
                            bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)


def save_tiny_stable_diffusion(directory: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny, randomly initialised Stable Diffusion folder (``StableDiffusionPipeline`` layout)."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    tokenizer = save_tiny_clip_tokenizer(directory / "tokenizer")
    vae = build_tiny_vae(seed=seed)
    latent = image_size // 8
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=build_tiny_text_encoder(len(tokenizer), seed=seed), tokenizer=tokenizer,
        unet=build_tiny_conditional_unet(sample_size=latent, seed=seed), scheduler=sd_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def save_tiny_latent_pair(directory: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    return save_latent_pair(directory, build_tiny_vae(seed=seed),
                            build_tiny_latent_unet(sample_size=image_size // 8, seed=seed))
