"""Surrogate diffusion models the perturbation is optimised against.

``base`` (the interface and safetensors rules) < ``pixel`` and ``latent`` (the kinds) <
``loader`` (one entry point that picks the kind). Nothing here knows of datasets or the CLI.
"""

from .base import EXTRAS_FILE, Surrogate, SurrogateError, SurrogateRef, weights_sha256
from .loader import is_latent_folder, load_surrogate, resolve_surrogate_folder, surrogate_is_latent
from .pixel import ARCHITECTURES, build_surrogate, build_unet
from .shipped import SHIPPED_PAIR_SHA256, local_surrogate_path, shipped_pair_folder

__all__ = ["ARCHITECTURES", "EXTRAS_FILE", "SHIPPED_PAIR_SHA256", "Surrogate", "SurrogateError", "SurrogateRef",
           "build_surrogate", "build_unet", "is_latent_folder", "load_surrogate", "local_surrogate_path",
           "resolve_surrogate_folder", "shipped_pair_folder", "surrogate_is_latent", "weights_sha256"]
