"""The one loader above the surrogate kinds: a folder or Hub id, or the built-in architecture.

A folder with a VAE is a latent surrogate (:mod:`.latent`), anything else a pixel one
(:mod:`.pixel`); Hub ids are fetched with ``snapshot_download`` (configs and safetensors only).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .base import Surrogate, SurrogateError
from .latent import load_latent_surrogate
from .pixel import build_surrogate, load_pixel_surrogate
from .shipped import local_surrogate_path

SURROGATE_FILE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.md"]

def load_surrogate(source: str | os.PathLike | None = None, revision: str | None = None, *,
                   config: Any = None) -> Surrogate:
    """Load a surrogate from a local folder or Hub id, or build the configured built-in one.

    ``config`` is a :class:`~udp_datasets.ProtectionConfig`; its ``surrogate`` and
    ``surrogate_revision`` are used when ``source`` is not given.
    """
    if source is None and config is not None:
        source, revision = config.surrogate, config.surrogate_revision
    if source is None:
        if config is None:
            return build_surrogate()
        return build_surrogate(config.surrogate_arch, config.resolution, seed=config.seed,
                               num_train_timesteps=config.num_train_timesteps,
                               beta_schedule=config.beta_schedule)
    folder = resolve_surrogate_folder(str(source), revision)
    if is_latent_folder(folder):
        return load_latent_surrogate(folder, str(source), revision)
    return load_pixel_surrogate(folder, str(source), revision)


def surrogate_is_latent(source: str, revision: str | None = None) -> bool:
    """Whether ``source`` names a latent surrogate (it has a VAE): a local folder is looked at; a Hub id by
    its ``model_index.json`` alone (nothing else is downloaded; a repository without one is a pixel model)."""
    path = local_surrogate_path(source)  # the shipped pair's names (taef2, bundled) included
    if path.exists():
        return path.is_dir() and is_latent_folder(path)
    try:
        from huggingface_hub import hf_hub_download

        index = Path(hf_hub_download(source, "model_index.json", revision=revision))
        return "vae" in json.loads(index.read_text())
    except Exception:  # noqa: BLE001 - offline, no such repo or file: decided when the model is loaded
        return False


def is_latent_folder(folder: str | Path) -> bool:
    """A Stable Diffusion folder or a latent pair: it has a VAE."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if index.exists():
        try:
            if "vae" in json.loads(index.read_text()):
                return True
        except json.JSONDecodeError:
            pass
    return (folder / "vae" / "config.json").exists()


def resolve_surrogate_folder(source: str, revision: str | None) -> Path:
    """The shipped pair for ``taef2`` / ``bundled``; a local folder as is; otherwise a Hub id fetched (config +
    safetensors only)."""
    path = local_surrogate_path(source)
    if path.exists():
        if not path.is_dir():
            raise SurrogateError(f"surrogate {source!r} is a file; give the model folder instead")
        return path
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1 or "\\" in source
    if looks_like_path:
        raise SurrogateError(f"surrogate folder {source!r} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(source, revision=revision, allow_patterns=SURROGATE_FILE_PATTERNS))
    except LocalEntryNotFoundError as exc:
        raise SurrogateError(
            f"surrogate {source!r} is neither a local folder nor reachable on the Hub "
            f"(offline?). Download it once with `huggingface-cli download {source}` and pass the "
            "folder, or set HF_ENDPOINT to a reachable Hub.") from exc
    except HfHubHTTPError as exc:
        raise SurrogateError(f"surrogate {source!r} could not be fetched from the Hub: {exc}") from exc
