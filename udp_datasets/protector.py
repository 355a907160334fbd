"""Protector: the user-facing object, and a ``datasets`` batched map function.

    protector = Protector(ProtectionConfig())
    protector.fit(train_subset)                 # trains the surrogate, saves it
    protected = ds.map(protector, batched=True, batch_size=32)

It pickles *small*: only the config (whose ``surrogate`` points at the saved
weights), the surrogate's weight hash and the options travel to worker
processes, so datasets' fingerprint is the same in every process and a re-run
hits the cache. The model is loaded lazily, once per worker, on the device its
rank maps to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import torch

from .config import ProtectionConfig
from .method.fit import FitResult, fit_surrogate
from .images import PATH_ONLY_REASON, DecodedImage, ImageError, describe_error, encode_png, load_image
from .method.batches import plan_batches
from .method.objectives import ProtectionObjective
from .method.generator import engine_delta
from .method.pgd import BudgetError, check_budget, quantize_within_budget, random_start, sample_generator
from .models import Surrogate, SurrogateError, SurrogateRef, load_surrogate
from .models.devices import resolve_device
from .models.runtime import Tuning, apply_tuning, autocast, grad_scale, resolve_tuning
from .sources.columns import check_dataset, stored_image_column as stored_column
from .sources.paths import data_image_value, inline_path_entry

logger = logging.getLogger(__name__)

PROVENANCE_COLUMNS = ("udp_key", "udp_source_sha256", "udp_sha256", "udp_width", "udp_height", "udp_linf",
                      "udp_psnr")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ColumnError(KeyError):
    """The batch lacks the image (or key) column; the message lists what it has."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


@dataclass
class ProtectedImage:
    """One protected image: PNG bytes plus the numbers that go into provenance."""

    key: str
    png: bytes
    source_sha256: str | None
    sha256: str
    linf: int
    psnr: float
    width: int
    height: int


@dataclass
class FailedImage:
    key: str
    index: int
    reason: str


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def default_surrogate_cache() -> Path:
    base = os.environ.get("UDP_DATASETS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "udp_datasets")
    return Path(base) / "surrogates"


class Protector:
    """Protects images with UDP / EUDP; callable as a datasets batched map function.

    Args:
        config: the protection recipe.
        image_column: the column holding images (PIL, ``{"bytes", "path"}``, bytes or paths).
        key_column: optional column of stable sample ids that seed per-sample randomness;
            by default the hash of the decoded pixels is the key.
        errors: ``"raise"`` (default) stops at the first bad image with its index and
            reason; ``"quarantine"`` leaves bad rows out of the output and appends a JSON
            line (key, index, reason) to ``errors_file``. Nothing unprotected is ever returned.
        errors_file: where quarantined records go (required with ``errors="quarantine"``).
        provenance_columns: add ``udp_*`` columns (key, source / output SHA-256, L-inf
            levels, PSNR) that manifests are built from.
        surrogate: an already loaded surrogate (kept in this process only; workers reload
            it from ``config.surrogate``).
        tuning: ``{switch: value}`` overriding the speed switches that the config's runtime
            fields and the device choose (:class:`udp_datasets.models.runtime.Tuning`: ``freeze``,
            ``reuse_buffers``, ``mixed_shapes``, ``overlap``, ``sdpa``, ...); for benchmarks and tests.
        image_root: the folder of a local source whose files the data names by path (``{"bytes": None,
            "path"}``, as ``load_dataset("imagefolder")`` stores them), the only place such a path is opened;
            None (shards, Hub, remote data): images come from their bytes, path-only entries are quarantined.
    """

    def __init__(self, config: ProtectionConfig | None = None, image_column: str = "image",
                 key_column: str | None = None, errors: Literal["raise", "quarantine"] = "raise",
                 errors_file: str | os.PathLike | None = None, provenance_columns: bool = False,
                 max_pixels: int | None = None, progress: bool = True,
                 surrogate: Surrogate | None = None, tuning: dict[str, Any] | None = None,
                 image_root: str | os.PathLike | None = None):
        if errors not in ("raise", "quarantine"):
            raise ValueError(f"errors={errors!r} must be 'raise' or 'quarantine'")
        if errors == "quarantine" and errors_file is None:
            raise ValueError("errors='quarantine' needs errors_file= (a JSONL path for the records)")
        self.config = config or ProtectionConfig()
        self.image_column = image_column
        self.key_column = key_column
        self.errors = errors
        self.errors_file = str(errors_file) if errors_file is not None else None
        self.provenance_columns = provenance_columns
        self.max_pixels = max_pixels
        self.progress = progress
        self._surrogate = surrogate
        self._objective: ProtectionObjective | None = None
        self._lock = threading.Lock()
        self.tuning_overrides = dict(tuning) if tuning else None
        self._tuning: Tuning | None = None
        self.surrogate_ref: SurrogateRef | None = surrogate.ref if surrogate is not None else None
        if self.surrogate_ref is None and self.config.surrogate is not None:
            self.surrogate_ref = self._peek_ref()
        self.fit_result: FitResult | None = None
        self.image_root = str(Path(image_root).expanduser().resolve()) if image_root is not None else None

    # ------------------------------------------------------------- pickling
    def __getstate__(self) -> dict[str, Any]:
        """Config + surrogate reference + options: never the weights (stable fingerprint)."""
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("_surrogate", "_objective", "_lock", "fit_result", "progress", "_tuning")}
        for name in ("tuning_overrides", "image_root"):
            if state.get(name) is None:  # default protectors keep their old fingerprint
                state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._surrogate = None
        self._objective = None
        self._lock = threading.Lock()
        self.fit_result = None
        self.progress = False
        self.tuning_overrides = state.get("tuning_overrides")
        self.image_root = state.get("image_root")
        self._tuning = None

    def _peek_ref(self) -> SurrogateRef | None:
        """Hash local weights up front so the fingerprint changes when they do."""
        from .models import is_latent_folder, local_surrogate_path, weights_sha256

        path = local_surrogate_path(self.config.surrogate)  # taef2 / bundled: the shipped pair
        if path.is_dir():
            try:
                return SurrogateRef(kind="latent" if is_latent_folder(path) else "pixel",
                                    source=self.config.surrogate,
                                    revision=self.config.surrogate_revision,
                                    sha256=weights_sha256(path))
            except SurrogateError:
                return None  # reported precisely when the model is loaded
        return SurrogateRef(kind="pixel", source=self.config.surrogate,
                            revision=self.config.surrogate_revision)

    # --------------------------------------------------------------- device
    def device_for(self, rank: int | None) -> torch.device:
        """The device this worker's rank runs on (``config.device``; ``auto`` spreads ranks over GPUs)."""
        return resolve_device(self.config.device, rank)

    def surrogate(self, rank: int | None = None) -> Surrogate:
        """Deprecated name of :meth:`prepare_surrogate` (kept for 0.2.x; a noun that loads a model)."""
        import warnings

        warnings.warn("Protector.surrogate(rank) is now Protector.prepare_surrogate(rank); the old name goes "
                      "in udp-datasets 0.3", DeprecationWarning, stacklevel=2)
        return self.prepare_surrogate(rank)

    def prepare_surrogate(self, rank: int | None = None) -> Surrogate:
        """Load the surrogate once, put it on this worker's device, frozen, and return it."""
        with self._lock:
            if self._surrogate is None:
                if self.config.surrogate is None:
                    raise SurrogateError(
                        "no surrogate to protect against: call Protector.fit(images) first (it "
                        "trains the built-in surrogate on your data), or set "
                        "ProtectionConfig(surrogate=PATH_OR_HUB_ID) to a pretrained one")
                self._surrogate = load_surrogate(config=self.config)
                self.surrogate_ref = self._surrogate.ref
            device = self.device_for(rank)
            dtype = _DTYPES[self.config.dtype]
            if self._surrogate.device != device or next(self._surrogate.unet.parameters()).dtype != dtype:
                self._surrogate.to(device, dtype)
                self._objective = None
                if self.config.gradient_checkpointing and hasattr(self._surrogate, "enable_memory_savers"):
                    self._surrogate.enable_memory_savers()
            if self._objective is None:
                self._surrogate.freeze()
                self._tuning = resolve_tuning(self.config, device, self._surrogate.kind, dtype, self.tuning_overrides)
                apply_tuning(self._surrogate, self._tuning)
                logger.debug("transform tuning on %s: %s", device, self._tuning)
                self._objective = ProtectionObjective(self._surrogate, self.config)
            return self._surrogate

    @property
    def tuning(self) -> Tuning:
        """The speed switches in force (resolved for the device by :meth:`prepare_surrogate`)."""
        if self._tuning is None:
            self.prepare_surrogate()
        assert self._tuning is not None
        return self._tuning

    # ------------------------------------------------------------------ fit
    def fit(self, data: Any, output_dir: str | os.PathLike | None = None,
            image_column: str | None = None) -> FitResult:
        """Train the surrogate on (a subset of) the data and save it; returns the loss history.

        ``data`` is a datasets ``Dataset`` (its ``image_column`` is read) or any iterable
        of images. With ``unlearnable`` this is the min-min co-training; with
        ``adversarial`` the surrogate is trained on the clean images. The fitted model is
        saved as safetensors to ``output_dir`` (default: a cache folder keyed by config and
        data), and ``self.config.surrogate`` then points at it, so workers and re-runs load
        exactly these weights.
        """
        column = image_column or self.image_column
        images, keys, captions = self._fit_subset(data, column)
        if self.config.surrogate is not None:
            surrogate = load_surrogate(config=self.config)
        else:
            surrogate = load_surrogate(config=self.config.replace(surrogate=None))
        surrogate.to(self.device_for(None))
        result = fit_surrogate(surrogate, images, keys, self.config, progress=self.progress, captions=captions)
        if output_dir is None:
            data_hash = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
            output_dir = default_surrogate_cache() / f"{self.config.hash()}-{data_hash}"
        ref = surrogate.save(output_dir)
        (Path(output_dir) / "udp_fit.json").write_text(json.dumps(
            {"config": self.config.to_dict(), "fit": result.to_dict(), "weights_sha256": ref.sha256},
            indent=2))
        logger.info("fitted surrogate saved to %s", output_dir)
        self.config = self.config.replace(surrogate=str(Path(output_dir).resolve()),
                                          surrogate_revision=None)
        self._surrogate = surrogate
        self._objective = None
        self.surrogate_ref = ref
        self.fit_result = result
        return result

    def _fit_subset(self, data: Any, column: str) -> tuple[list[np.ndarray], list[str], list[Any] | None]:
        values: Sequence[Any]
        all_captions: Sequence[Any] | None = None
        caption_column = self.config.caption_column
        if hasattr(data, "column_names") and hasattr(data, "select"):
            for name in (column, caption_column):
                if name is not None and name not in data.column_names:
                    raise ColumnError(f"column {name!r} not found; columns are {data.column_names}")
            data = raw_image_column(data, column)
            n = len(data)
            idx = _subset_indices(n, self.config.fit_max_samples, self.config.seed)
            subset = data.select(idx)
            values = subset[column]
            if caption_column is not None:
                all_captions = subset[caption_column]
        else:
            if caption_column is not None:
                raise ColumnError(f"caption_column={caption_column!r} needs a datasets.Dataset with that column; "
                                  "a plain list of images has no captions (use prompt= instead)")
            values = list(data)
            idx = _subset_indices(len(values), self.config.fit_max_samples, self.config.seed)
            values = [values[i] for i in idx]
        images, keys, captions, bad, reason = [], [], [], 0, ""
        for i, value in enumerate(values):
            try:
                value, may_open = self._readable(value, from_data=hasattr(data, "select"))
                decoded = load_image(value, key=str(i), open_paths=may_open, **self._load_kwargs())
            except ImageError as exc:
                bad, reason = bad + 1, self._reason(exc)
                logger.warning("fit: skipping sample %s: %s", exc.key, reason)
                continue
            images.append(decoded.pixels)
            keys.append(decoded.pixel_sha256())
            captions.append(None if all_captions is None else all_captions[i])
        if bad:
            logger.warning("fit: %d of %d images could not be decoded and were skipped", bad, len(values))
        if not images:
            raise ImageError("fit: no decodable image in the data" + (f" (the last one: {reason})" if reason else ""))
        return images, keys, (captions if all_captions is not None else None)

    def _load_kwargs(self) -> dict[str, Any]:
        return {} if self.max_pixels is None else {"max_pixels": self.max_pixels}

    def _reason(self, exc: ImageError) -> str:
        if exc.reason == PATH_ONLY_REASON and self.image_root is None:
            return exc.reason + " (your own image folder: pass Protector(image_root=FOLDER), or give it as the source)"
        return exc.reason

    def _readable(self, value: Any, from_data: bool) -> tuple[Any, bool]:
        """(value, whether load_image may open its path): a path inside data (an entry's, or a path
        string of a dataset column) is read only inside ``image_root``; a path string that a caller
        hands over in a plain list is the caller's to open."""
        if isinstance(value, dict) or (from_data and isinstance(value, (str, os.PathLike))):
            return inline_path_entry(value, self.image_root), False
        return value, isinstance(value, (str, os.PathLike))

    # -------------------------------------------------------------- protect
    def protect_images(self, images: Sequence[Any], keys: Sequence[str] | None = None,
                       rank: int | None = None, names: Sequence[str] | None = None,
                       captions: Sequence[str | None] | None = None,
                       ) -> list[ProtectedImage | FailedImage]:
        """Protect a list of images; failures come back as :class:`FailedImage` records.

        ``keys`` seed each sample's randomness (default: its pixel hash); ``names`` only
        label failures (default: the key, else the position); ``captions`` fill the
        ``{caption}`` of the prompt template for a text-conditioned surrogate.
        """
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        decoded: list[DecodedImage | FailedImage] = []
        for i, value in enumerate(images):
            name = str(keys[i]) if keys is not None else (names[i] if names is not None else f"item {i}")
            try:
                value, may_open = self._readable(value, from_data=False)
                decoded.append(load_image(value, key=name, open_paths=may_open, **self._load_kwargs()))
            except ImageError as exc:
                decoded.append(FailedImage(key=name, index=i, reason=self._reason(exc)))
            except MemoryError:
                decoded.append(FailedImage(key=name, index=i, reason="not enough memory to decode this image"))
        final_keys = [
            d.key if isinstance(d, FailedImage) else (str(keys[i]) if keys is not None else d.pixel_sha256())
            for i, d in enumerate(decoded)
        ]
        results: list[ProtectedImage | FailedImage | None] = [
            d if isinstance(d, FailedImage) else None for d in decoded]
        todo = [i for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        if todo:
            surrogate = self.prepare_surrogate(rank)
            labels = [str(keys[i]) if keys is not None else (names[i] if names is not None else f"item {i}")
                      for i in range(len(decoded))]
            self._protect_decoded(decoded, todo, final_keys, captions, surrogate, results, labels)
        return results  # type: ignore[return-value]

    def _protect_decoded(self, decoded: list, todo: list[int], keys: list[str], captions: Sequence[Any] | None,
                         surrogate: Surrogate, results: list, labels: list[str]) -> None:
        """Batch the decoded images (size buckets under the pixel budget) and protect each batch; with
        ``overlap`` the rounding and PNG encoding of a batch run while the next one is optimised."""
        tuning = self.tuning
        batches, too_big = plan_batches([decoded[i].shape for i in todo], self.config.batch_size,
                                        tuning.batch_pixels, mixed=tuning.mixed_shapes)
        for j in too_big:
            i = todo[j]
            h, w = decoded[i].shape[:2]
            results[i] = FailedImage(key=keys[i], index=i, reason=(
                f"image {labels[i]} is {w}x{h} = {w * h} pixels, more than the batch pixel budget of "
                f"{tuning.batch_pixels} (batch_pixels): it cannot be protected within this device's memory; raise "
                "--batch-pixels on a machine with more memory, or downscale it"))
        pool = ThreadPoolExecutor(1, thread_name_prefix="udp-finish") if tuning.overlap and len(batches) > 1 else None
        pending: list[Future] = []
        try:
            for batch in batches:
                chunk = [todo[j] for j in batch]
                items = [decoded[i] for i in chunk]
                chunk_keys = [keys[i] for i in chunk]
                try:
                    perturbed = self._optimise(items, chunk_keys, surrogate,
                                               None if captions is None else [captions[i] for i in chunk])
                except (MemoryError, RuntimeError) as exc:
                    if not out_of_memory(exc):
                        raise
                    if len(batch) > 1:  # try each image alone; one that still cannot fit is named
                        batches.extend([j] for j in batch)
                        continue
                    h, w = items[0].shape[:2]
                    results[chunk[0]] = FailedImage(key=chunk_keys[0], index=chunk[0], reason=f"ran out of memory on this "
                                                    f"{w}x{h} image ({describe_error(exc)}); set --batch-pixels below {w * h}")
                    continue
                if pool is None:
                    self._finish(items, chunk_keys, chunk, perturbed, results)
                else:
                    pending.append(pool.submit(self._finish, items, chunk_keys, chunk, perturbed, results))
            for future in pending:
                future.result()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

    def _optimise(self, items: list[DecodedImage], keys: list[str], surrogate: Surrogate,
                  captions: list[Any] | None = None) -> list[np.ndarray]:
        """The engine (PGD by default) on one batch: each image's perturbed pixels, (H, W, C) float in [0, 1]."""
        cfg, tuning = self.config, self.tuning
        device = surrogate.device
        same = len({d.shape for d in items}) == 1
        if same:
            clean = np.stack([d.pixels for d in items])  # (B, H, W, C) uint8
            x: Any = torch.from_numpy(clean).permute(0, 3, 1, 2).float().div(255).to(device)
        else:  # a mixed batch: one (1, C, H, W) tensor per image
            x = [torch.from_numpy(np.stack([d.pixels])).permute(0, 3, 1, 2).float().div(255).to(device) for d in items]
        gens = [sample_generator(cfg.seed, k) for k in keys]
        eps = cfg.budget_levels / 255.0
        objective = self._objective
        assert objective is not None
        delta = engine_delta(x, cfg, lambda: objective.loss_fn(gens, x, captions), objective.maximize,
                             lambda: self._initial_delta(x, gens, eps, surrogate, same),
                             lambda: autocast(device, tuning), in_place=tuning.reuse_buffers,
                             grad_scale=grad_scale(tuning))
        if same:
            return list((x + delta).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy())
        return [(xi + di).clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy() for xi, di in zip(x, delta)]

    def _initial_delta(self, x: Any, gens: list[torch.Generator], eps: float, surrogate: Surrogate,
                       same: bool) -> Any:
        """Where PGD starts: zero, a random point of the ball, and/or the image's cluster's shared delta."""
        assert self._objective is not None
        if not same:  # per image, with the same draws as in a batch of its own shape
            inits = [self._initial_delta(xi, [g], eps, surrogate, True) for xi, g in zip(x, gens)]
            return None if all(d is None for d in inits) else [torch.zeros_like(xi) if d is None else d
                                                                for xi, d in zip(x, inits)]
        init = random_start(x.shape[1:], gens, eps) if self.config.random_start or self._objective.needs_random_start \
            else None
        if "clusters.centroids" in surrogate.extras:  # start from the cluster's shared shortcut
            from .method.clusters import cluster_init

            shared = cluster_init(x, surrogate.extras["clusters.centroids"], surrogate.extras["clusters.deltas"], eps)
            init = shared if init is None else (shared + init).clamp(-eps, eps)
        return init

    def _finish(self, items: list[DecodedImage], keys: list[str], indices: list[int], perturbed: list[np.ndarray],
                results: list) -> None:
        """Round each image to 8 bits, prove the budget, encode the PNG and record the result."""
        for item, key, index, pert_i in zip(items, keys, indices, perturbed):
            try:
                results[index] = self._finish_one(item, key, index, pert_i)
            except MemoryError:  # a huge image at the edge of the memory: named, never a crash
                h, w = item.pixels.shape[:2]
                results[index] = FailedImage(key=key, index=index, reason=f"ran out of memory rounding this {w}x{h} image")

    def _finish_one(self, item: DecodedImage, key: str, index: int, pert_i: np.ndarray) -> ProtectedImage | FailedImage:
        levels = self.config.budget_levels
        clean_i = item.pixels
        try:
            out = quantize_within_budget(clean_i, pert_i, levels)
            png = encode_png(out, item.alpha, item.icc_profile)
            linf = check_budget(clean_i, out, levels)
        except BudgetError as exc:  # never let an over-budget image through
            return FailedImage(key=key, index=index, reason=f"budget check failed: {exc}")
        if linf == 0:  # never pass an unchanged image off as protected
            return FailedImage(key=key, index=index, reason="protection left every pixel unchanged after 8-bit "
                               "rounding (e.g. a saturated or flat image); it cannot be published as protected")
        return ProtectedImage(
            key=key, png=png, source_sha256=item.source_sha256,
            sha256=hashlib.sha256(png).hexdigest(), linf=linf, psnr=psnr_uint8(clean_i, out),
            width=out.shape[1], height=out.shape[0])

    # ----------------------------------------------------- datasets map API
    def __call__(self, batch: dict[str, list[Any]], indices_or_rank: Any = None,
                 rank: int | None = None) -> dict[str, list[Any]]:
        """Batched map function: returns the batch with protected PNG images.

        Use ``ds.map(protector, batched=True)``; ``with_rank=True`` picks the GPU per
        worker and ``with_indices=True`` makes error messages name dataset rows.
        Bad rows raise, or are dropped and recorded with ``errors="quarantine"``.
        """
        indices: list[int] | None = None
        if isinstance(indices_or_rank, (list, tuple, range)):
            indices = list(indices_or_rank)
        elif indices_or_rank is not None:
            rank = indices_or_rank
        if self.image_column not in batch:
            raise ColumnError(f"image column {self.image_column!r} not found; the batch has columns "
                              f"{sorted(batch)} (pass image_column=...)")
        keys = None
        if self.key_column is not None:
            if self.key_column not in batch:
                raise ColumnError(f"key column {self.key_column!r} not found; the batch has columns "
                                  f"{sorted(batch)}")
            keys = [str(k) for k in batch[self.key_column]]
        captions = None
        if self.config.caption_column is not None:
            if self.config.caption_column not in batch:
                raise ColumnError(f"caption column {self.config.caption_column!r} not found; the batch has "
                                  f"columns {sorted(batch)}")
            captions = list(batch[self.config.caption_column])
        # as stored, before datasets' decoder: a corrupt file is quarantined by name, a path opened only in image_root
        values = [data_image_value(v, self.image_root) for v in stored_column(batch, self.image_column)]
        names = [_describe(v, i if indices is None else indices[i], indices is not None) for i, v in enumerate(values)]
        results = self.protect_images(values, keys=keys, rank=rank, names=names, captions=captions)
        failed = [r for r in results if isinstance(r, FailedImage)]
        for f in failed if indices is not None else ():
            f.index = indices[f.index]  # the dataset's row, not the position in this batch
        if failed and self.errors == "raise":
            f = failed[0]
            raise ImageError(f"{f.reason} (use errors='quarantine' to skip bad images and record "
                             "them)", f.key)
        if failed:
            self._quarantine(failed)
        keep = [i for i, r in enumerate(results) if isinstance(r, ProtectedImage)]
        out = {name: [] if name == self.image_column else [batch[name][i] for i in keep] for name in batch.keys()}
        good: list[ProtectedImage] = [results[i] for i in keep]  # type: ignore[misc]
        out[self.image_column] = [{"bytes": r.png, "path": None} for r in good]
        if self.provenance_columns:
            out["udp_key"] = [r.key for r in good]
            out["udp_source_sha256"] = [r.source_sha256 for r in good]
            out["udp_sha256"] = [r.sha256 for r in good]
            out["udp_width"] = [r.width for r in good]
            out["udp_height"] = [r.height for r in good]
            out["udp_linf"] = [r.linf for r in good]
            out["udp_psnr"] = [r.psnr if math.isfinite(r.psnr) else None for r in good]
        return out

    def _quarantine(self, failed: Iterable[FailedImage]) -> None:
        assert self.errors_file is not None
        Path(self.errors_file).parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps({"key": f.key, "index": f.index, "reason": f.reason}) + "\n"
                        for f in failed)
        # one O_APPEND write per batch: safe with several worker processes
        fd = os.open(self.errors_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, lines.encode())
        finally:
            os.close(fd)
        for f in failed:
            logger.warning("quarantined sample %s: %s", f.key, f.reason)

    def map(self, ds: Any, batch_size: int | None = None, num_proc: int | None = None, **map_kwargs: Any):
        """``ds.map(self, ...)`` done robustly: images reach the protector as raw bytes.

        Plain ``ds.map(protector)`` works too, but with a decoding ``Image()`` column a
        corrupt file fails inside datasets' decoder before the protector can quarantine
        it, and the source hash is of re-encoded pixels rather than the original file.
        This casts the column to ``Image(decode=False)`` first and back afterwards.
        """
        import datasets

        raw = raw_image_column(check_dataset(ds, self.image_column), self.image_column)  # one image column
        kwargs: dict[str, Any] = dict(batched=True, batch_size=batch_size or self.config.batch_size,
                                      with_indices=True, **map_kwargs)
        if isinstance(ds, datasets.IterableDataset):
            kwargs.setdefault("features", self.output_features(raw.features))
        else:
            kwargs.update(num_proc=num_proc, with_rank=bool(num_proc and num_proc > 1))
        out = raw.map(self, **kwargs)
        return out.cast_column(self.image_column, datasets.Image())

    def output_features(self, features: Any) -> Any:
        """The features of mapped output, for ``IterableDataset.map(..., features=...)``."""
        from datasets import Features, Image, Value

        feats = Features(dict(features)) if features is not None else Features()
        feats[self.image_column] = Image()
        if self.provenance_columns:
            feats.update({"udp_key": Value("string"), "udp_source_sha256": Value("string"),
                          "udp_sha256": Value("string"), "udp_width": Value("int32"),
                          "udp_height": Value("int32"), "udp_linf": Value("int32"),
                          "udp_psnr": Value("float64")})
        return feats


def raw_image_column(ds: Any, column: str) -> Any:
    """``ds`` with ``column`` as undecoded ``{"bytes", "path"}`` (when it is an Image column)."""
    import datasets

    features = getattr(ds, "features", None) or {}
    feature = features.get(column)
    if isinstance(feature, datasets.Image) and feature.decode:
        return ds.cast_column(column, datasets.Image(decode=False))
    return ds


def out_of_memory(exc: BaseException) -> bool:
    """Whether an exception is an allocation failure (host or device), not a bug."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or any(
        t in str(exc).lower() for t in ("out of memory", "can't allocate memory"))


def _describe(value: Any, index: int, global_index: bool) -> str:
    """A human name for a sample in error messages: its file path if known, else its row."""
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {index}" if global_index else f"batch row {index}"


def _subset_indices(n: int, limit: int, seed: int) -> list[int]:
    if n <= limit:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=limit, replace=False).tolist())
