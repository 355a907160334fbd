"""Tiny autoencoders as the VAE of a latent surrogate or victim: diffusers' ``AutoencoderTiny`` and
the pooled variant of the TAESD family (TAEF2, the tiny autoencoder of FLUX.2's latent space).

Why here: the part of a latent diffusion model that protection can bite is its VAE *encoder*
(Xue et al., ICLR 2024). A real pretrained encoder that runs on a CPU makes that regime
measurable offline, so the package ships TAEF2's weights (``weights/taef2/``, MIT, with their
LICENSE and provenance) and :func:`bundled_taef2` loads them.

TAEF2 is TAESD's layout (flat ``nn.Sequential`` halves of 64-channel residual blocks, 8x
downsampling, 32 latent channels here) plus one branch diffusers' ``AutoencoderTiny`` lacks: in
the three deepest blocks of each half, ``pool`` = 1x1 conv c->4c, GroupNorm(4, 4c), ReLU, 1x1
conv 4c->c, added to the block's input before its convolutions. GroupNorm pools statistics over
the whole feature map, so each block sees global context. :class:`AutoencoderTinyPooled`
subclasses ``AutoencoderTiny`` and swaps those blocks, so ``save_pretrained`` /
``from_pretrained``, ``encode`` / ``decode`` and the ``[-1, 1]`` pixel convention are diffusers'.
:func:`load_taesd_halves` reads the original two-file layout (``encoder.safetensors``,
``decoder.safetensors``; keys are positions in the flat Sequential, the decoder's shifted by the
``Clamp`` module TAESD puts first). safetensors only. Importing this module imports diffusers, so
the rest of the package imports it lazily.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, AutoencoderTiny
from diffusers.configuration_utils import register_to_config
from diffusers.models.unets.unet_2d_blocks import AutoencoderTinyBlock
from torch import nn

from .base import SurrogateError
from .shipped import packaged_weights

TAESD_HALVES = ("encoder.safetensors", "decoder.safetensors")

# TAEF2: 32 latent channels, 8x downsampling, 64-channel blocks (see weights/taef2/PROVENANCE.md)
TAEF2_CONFIG: dict[str, Any] = dict(
    in_channels=3, out_channels=3, encoder_block_out_channels=(64, 64, 64, 64),
    decoder_block_out_channels=(64, 64, 64, 64), act_fn="relu", upsample_fn="nearest", latent_channels=32,
    upsampling_scaling_factor=2, num_encoder_blocks=(1, 3, 3, 3), num_decoder_blocks=(3, 3, 3, 1),
    latent_magnitude=3, latent_shift=0.5, force_upcast=False, scaling_factor=1.0, shift_factor=0.0,
    pooled_blocks=3,
)


class PooledTinyBlock(AutoencoderTinyBlock):
    """``AutoencoderTinyBlock`` with TAEF2's branch: ``x + pool(x)`` enters the block's convolutions."""

    def __init__(self, channels: int, act_fn: str):
        super().__init__(channels, channels, act_fn)
        self.pool = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1, bias=False), nn.GroupNorm(4, 4 * channels),
                                  nn.ReLU(), nn.Conv2d(4 * channels, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + self.pool(x))


class AutoencoderTinyPooled(AutoencoderTiny):
    """``AutoencoderTiny`` whose ``pooled_blocks`` deepest blocks per half are :class:`PooledTinyBlock`."""

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 encoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64),
                 decoder_block_out_channels: tuple[int, ...] = (64, 64, 64, 64), act_fn: str = "relu",
                 upsample_fn: str = "nearest", latent_channels: int = 4, upsampling_scaling_factor: int = 2,
                 num_encoder_blocks: tuple[int, ...] = (1, 3, 3, 3), num_decoder_blocks: tuple[int, ...] = (3, 3, 3, 1),
                 latent_magnitude: int = 3, latent_shift: float = 0.5, force_upcast: bool = False,
                 scaling_factor: float = 1.0, shift_factor: float = 0.0, pooled_blocks: int = 3,
                 block_out_channels: tuple[int, ...] | None = None,
                 latents_mean: tuple[float, ...] | None = None, latents_std: tuple[float, ...] | None = None):
        # block_out_channels: AutoencoderTiny writes it into every saved config (a copy of the decoder's
        # channels); accepted and ignored here so reloading a saved folder does not warn about it.
        # latents_mean / latents_std: a per-channel normalisation (diffusers' AutoencoderKL names), read
        # by models.latent.latent_normalisation; stored in the config only, so nothing else uses them here.
        del block_out_channels, latents_mean, latents_std
        super().__init__(in_channels=in_channels, out_channels=out_channels,
                         encoder_block_out_channels=encoder_block_out_channels,
                         decoder_block_out_channels=decoder_block_out_channels, act_fn=act_fn, upsample_fn=upsample_fn,
                         latent_channels=latent_channels, upsampling_scaling_factor=upsampling_scaling_factor,
                         num_encoder_blocks=num_encoder_blocks, num_decoder_blocks=num_decoder_blocks,
                         latent_magnitude=latent_magnitude, latent_shift=latent_shift, force_upcast=force_upcast,
                         scaling_factor=scaling_factor, shift_factor=shift_factor)
        if pooled_blocks:  # the deepest blocks work at the lowest resolution: last in the encoder, first in the decoder
            for layers, chosen in ((self.encoder.layers, _blocks(self.encoder.layers)[-pooled_blocks:]),
                                   (self.decoder.layers, _blocks(self.decoder.layers)[:pooled_blocks])):
                for i in chosen:
                    layers[i] = PooledTinyBlock(layers[i].conv[0].in_channels, act_fn)


def _blocks(layers: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(layers) if isinstance(m, AutoencoderTinyBlock)]


def load_taesd_halves(folder: str | Path, config: dict[str, Any] | None = None) -> nn.Module:
    """Load TAESD-family weights in their original two-file layout into ``AutoencoderTinyPooled``.

    ``config`` defaults to :data:`TAEF2_CONFIG`; the weights are upcast to float32 (they ship in
    fp16) and must match the module exactly (``strict``).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [name for name in TAESD_HALVES if not (folder / name).is_file()]
    if missing:
        raise SurrogateError(f"{folder}: no {' / '.join(missing)}; a TAESD-style autoencoder folder holds "
                             "encoder.safetensors and decoder.safetensors (pickle .pth files are not loaded)")
    model = AutoencoderTinyPooled(**(config or TAEF2_CONFIG))
    state = {f"encoder.layers.{k}": v for k, v in load_file(str(folder / TAESD_HALVES[0])).items()}
    # TAESD's decoder starts with a Clamp module (index 0) that diffusers does in forward()
    for key, value in load_file(str(folder / TAESD_HALVES[1])).items():
        index, _, rest = key.partition(".")
        state[f"decoder.layers.{int(index) - 1}.{rest}"] = value
    try:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise SurrogateError(f"{folder}: the weights do not fit the tiny autoencoder layout: {exc}") from exc
    return model.eval()


def is_taesd_folder(folder: str | Path) -> bool:
    """A folder in TAESD's original two-file layout (no diffusers ``config.json``)."""
    folder = Path(folder)
    return all((folder / name).is_file() for name in TAESD_HALVES) and not (folder / "config.json").exists()


def load_autoencoder(folder: str | Path) -> nn.Module:
    """A VAE folder of any supported kind: diffusers ``AutoencoderKL`` / ``AutoencoderTiny`` /
    ``AutoencoderTinyPooled`` (``config.json`` + safetensors), or a TAESD two-file folder."""
    folder = Path(folder)
    if is_taesd_folder(folder):
        return load_taesd_halves(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in (".pth", ".pt", ".bin", ".ckpt", ".pkl"))
        hint = (f"; {', '.join(pickles)} look like pickle weights, which are never loaded (they can run code): "
                "convert them to safetensors once" if pickles else "")
        raise SurrogateError(f"{folder}: no config.json (diffusers VAE) and no encoder/decoder.safetensors "
                             f"(TAESD){hint}")
    name = json.loads(config_file.read_text()).get("_class_name", "AutoencoderKL")
    classes = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny,
               "AutoencoderTinyPooled": AutoencoderTinyPooled}
    if name not in classes:
        raise SurrogateError(f"{folder}: VAE class {name!r} is not supported ({', '.join(classes)})")
    if not list(folder.glob("*.safetensors")):
        raise SurrogateError(f"{folder} has no .safetensors weights; only safetensors are loaded")
    try:
        return classes[name].from_pretrained(folder, use_safetensors=True)
    except (OSError, ValueError, KeyError) as exc:
        raise SurrogateError(f"could not load the VAE in {folder}: {exc}") from exc


def bundled_taef2_folder() -> Path:
    """The TAEF2 weights shipped inside the package (``encoder/decoder.safetensors``, LICENSE, provenance)."""
    return packaged_weights("taef2")


def bundled_taef2() -> nn.Module:
    """TAEF2 as an ``AutoencoderTinyPooled`` (float32, eval mode), from the package's own copy."""
    return load_taesd_halves(bundled_taef2_folder())
