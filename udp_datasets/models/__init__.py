"""Surrogate diffusion models the perturbation is optimised against.

Its level, and so what it may import: ``layout.toml`` at the repository root.
"""

from .base import EXTRAS_FILE, Surrogate, SurrogateError, SurrogateRef, weights_sha256
from .loader import is_latent_folder, load_surrogate, resolve_surrogate_folder, surrogate_is_latent
from .pixel import ARCHITECTURES, build_surrogate, build_unet
from .shipped import SHIPPED_PAIR_SHA256, local_surrogate_path, shipped_pair_folder

__all__ = ["ARCHITECTURES", "EXTRAS_FILE", "SHIPPED_PAIR_SHA256", "Surrogate", "SurrogateError", "SurrogateRef",
           "build_surrogate", "build_unet", "is_latent_folder", "load_surrogate", "local_surrogate_path",
           "resolve_surrogate_folder", "shipped_pair_folder", "surrogate_is_latent", "weights_sha256"]
