"""The latent pair shipped in the package: ``--surrogate taef2`` (alias ``bundled``), the default of
``udp-datasets protect`` since 0.3 (config version 2).

``weights/taef2_pair/`` is the shipped TAEF2 encoder and decoder (float16, the same values as
``weights/taef2/``, with its LICENSE) with the per-channel latent statistics of its training corpus in
the VAE config, plus a 2.3 M-parameter latent UNet (``fewshot-surrogate``, float16) pretrained on the
bundled photographs by ``udp-datasets pretrain`` (the command, corpus and data are in its
``PROVENANCE.md`` and ``provenance.json``). It loads offline like any pair folder; :data:`SHIPPED_PAIR_SHA256`
is the SHA-256 of its weights (:func:`~.base.weights_sha256`), checked by the tests, and what job records
and dataset cards show as the surrogate's ``sha256``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..config import SHIPPED_SURROGATE_NAMES

SHIPPED_PAIR_SHA256 = "7b9310e763cc0ff5080f33aa68dfae2dc4b4ef8db08311c02540439855f89ffb"
"""``weights_sha256`` of ``weights/taef2_pair`` (every safetensors file, path-ordered)."""


def packaged_weights(name: str) -> Path:
    """``models/weights/NAME`` inside the installed package (TAEF2, the latent pair, the generator)."""
    return Path(str(resources.files("udp_datasets.models") / "weights" / name))


GLYPH_VICTIM = "glyph_victim"
"""``weights/glyph_victim/``: the few-shot study's pretrained victim and surrogate UNets (float16) for its
default corpus (3,000 generated glyphs, ``PretrainRecipe()``), so that ``evaluate --regime fewshot`` and
``demo --evaluate`` need not pretrain for an hour first (``udp_datasets.evaluate.victims.fewshot_pretrain``)."""
GLYPH_VICTIM_SHA256 = "b0f4adffc9b86cacaf31fe9f98f81685bd7f3efb66da7e2f6be990da0defcbe3"
"""``weights_sha256`` of ``weights/glyph_victim`` (every safetensors file, path-ordered)."""


def shipped_pair_folder() -> Path:
    """The folder of the shipped latent pair inside the installed package."""
    return packaged_weights("taef2_pair")


def is_shipped_name(source: object) -> bool:
    """Whether ``source`` names the shipped pair (``taef2`` or ``bundled``, as written, not a path)."""
    return isinstance(source, str) and source in SHIPPED_SURROGATE_NAMES


def local_surrogate_path(source: str) -> Path:
    """Where a surrogate named ``source`` lives on this machine, if it is local: the shipped pair for its
    names, else ``source`` as a path (which may not exist: then it is a Hub id)."""
    return shipped_pair_folder() if is_shipped_name(source) else Path(source).expanduser()
