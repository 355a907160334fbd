"""A surrogate session: one config's surrogate in one process, loaded once, on its rank's device, tuned.

The protector runs in ``datasets.map`` worker processes, which receive it pickled. A session pickles
*small*: the config (whose ``surrogate`` names the weights), the surrogate's :class:`SurrogateRef` (its
weight hash) and the speed-switch overrides, never the weights; so the ``datasets`` fingerprint is the same
in every process and changes exactly when the weights do. The model is loaded lazily, once per worker.

:meth:`SurrogateSession.prepare` is where the runtime switches (:mod:`.runtime`) are resolved for the
device and applied; ``generation`` counts the times the model was (re)placed, so what is built on it (the
protection objective, one level up) knows when to rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import ProtectionConfig
from .base import Surrogate, SurrogateError, SurrogateRef, weights_sha256
from .devices import resolve_device
from .loader import is_latent_folder, load_surrogate
from .runtime import Tuning, apply_tuning, resolve_tuning
from .shipped import local_surrogate_path

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FIT_RECORD = "udp_fit.json"
"""Written beside a fitted surrogate's weights: the config and loss history that made them."""


def default_surrogate_cache() -> Path:
    """Where fitted surrogates go when no folder is given (``UDP_DATASETS_CACHE`` or the XDG cache)."""
    base = os.environ.get("UDP_DATASETS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "udp_datasets")
    return Path(base) / "surrogates"


def peek_ref(config: ProtectionConfig) -> SurrogateRef | None:
    """The reference of ``config.surrogate`` without loading it: local weights are hashed up front, so a
    fingerprint built from it changes when they do (None: unreadable, reported when the model is loaded)."""
    if config.surrogate is None:
        return None
    path = local_surrogate_path(config.surrogate)  # taef2 / bundled: the shipped pair
    if path.is_dir():
        try:
            return SurrogateRef(kind="latent" if is_latent_folder(path) else "pixel", source=config.surrogate,
                                revision=config.surrogate_revision, sha256=weights_sha256(path))
        except SurrogateError:
            return None
    return SurrogateRef(kind="pixel", source=config.surrogate, revision=config.surrogate_revision)


class SurrogateSession:
    """``config``'s surrogate for this process (``surrogate``: one already loaded, kept in this process only;
    workers reload it from ``config.surrogate``); ``tuning``: ``{switch: value}`` overriding the speed
    switches the config and device choose (:class:`~.runtime.Tuning`)."""

    def __init__(self, config: ProtectionConfig, surrogate: Surrogate | None = None,
                 tuning: dict[str, Any] | None = None):
        self.config = config
        self.surrogate = surrogate
        self.tuning_overrides = dict(tuning) if tuning else None
        self.ref: SurrogateRef | None = surrogate.ref if surrogate is not None else peek_ref(config)
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._tuning: Tuning | None = None
        self._ready = False
        self.generation = 0

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        """Config + surrogate reference (+ overrides when given): never the weights (a stable fingerprint)."""
        state = {"config": self.config, "ref": self.ref}
        return state | ({"tuning_overrides": self.tuning_overrides} if self.tuning_overrides else {})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config, self.ref = state["config"], state["ref"]
        self.tuning_overrides = state.get("tuning_overrides")
        self.surrogate = None
        self._reset()

    # -------------------------------------------------------------- loading
    def device_for(self, rank: int | None) -> torch.device:
        """The device this worker's rank runs on (``config.device``; ``auto`` spreads ranks over GPUs)."""
        return resolve_device(self.config.device, rank)

    def prepare(self, rank: int | None = None) -> Surrogate:
        """Load the surrogate once, put it on this worker's device, frozen and tuned, and return it."""
        with self._lock:
            if self.surrogate is None:
                if self.config.surrogate is None:
                    raise SurrogateError(
                        "no surrogate to protect against: call Protector.fit(images) first (it "
                        "trains the built-in surrogate on your data), or set "
                        "ProtectionConfig(surrogate=PATH_OR_HUB_ID) to a pretrained one")
                self.surrogate = load_surrogate(config=self.config)
                self.ref = self.surrogate.ref
            surrogate, device, dtype = self.surrogate, self.device_for(rank), DTYPES[self.config.dtype]
            if surrogate.device != device or next(surrogate.unet.parameters()).dtype != dtype:
                surrogate.to(device, dtype)
                self._ready = False
                if self.config.gradient_checkpointing and hasattr(surrogate, "enable_memory_savers"):
                    surrogate.enable_memory_savers()
            if not self._ready:
                surrogate.freeze()
                self._tuning = resolve_tuning(self.config, device, surrogate.kind, dtype, self.tuning_overrides)
                apply_tuning(surrogate, self._tuning)
                logger.debug("transform tuning on %s: %s", device, self._tuning)
                self._ready, self.generation = True, self.generation + 1
            return surrogate

    @property
    def tuning(self) -> Tuning:
        """The speed switches in force (resolved for the device by :meth:`prepare`)."""
        if self._tuning is None:
            self.prepare()
        assert self._tuning is not None
        return self._tuning

    # ------------------------------------------------------------------ fit
    def fresh(self, rank: int | None = None) -> Surrogate:
        """A newly loaded surrogate of the config (the built-in, untrained one when it names none), on the
        device, for training: never the session's own model."""
        return load_surrogate(config=self.config).to(self.device_for(rank))

    def adopt(self, surrogate: Surrogate, output_dir: str | os.PathLike | None, fit: dict[str, Any],
              keys: Sequence[str]) -> SurrogateRef:
        """Save a surrogate fitted on the images ``keys`` name to ``output_dir`` (default: a cache folder keyed
        by config and data), with :data:`FIT_RECORD`, and make it this session's: ``config.surrogate`` then
        names that folder, so workers and re-runs load exactly these weights."""
        if output_dir is None:
            data_hash = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
            output_dir = default_surrogate_cache() / f"{self.config.hash()}-{data_hash}"
        ref = surrogate.save(output_dir)
        (Path(output_dir) / FIT_RECORD).write_text(json.dumps(
            {"config": self.config.to_dict(), "fit": fit, "weights_sha256": ref.sha256}, indent=2))
        logger.info("fitted surrogate saved to %s", output_dir)
        self.config = self.config.replace(surrogate=str(Path(output_dir).resolve()), surrogate_revision=None)
        self.surrogate, self.ref, self._ready, self.generation = surrogate, ref, False, self.generation + 1
        return ref
