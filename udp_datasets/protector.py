"""Protector: the user-facing object, and a ``datasets`` batched map function.

    protector = Protector(ProtectionConfig())
    protector.fit(train_subset)                 # trains the surrogate, saves it
    protected = ds.map(protector, batched=True, batch_size=32)

A thin adapter: it reads columns, decodes under the path rule (:mod:`udp_datasets.sources.paths`) and hands
the images to the tensor engine (:mod:`udp_datasets.method.engine`) over a surrogate session
(:mod:`udp_datasets.models.session`). It pickles *small* (config, weight hashes, options: never weights), so
datasets' fingerprint is the same in every process, changes with the weights, and a re-run hits the cache.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Literal, Sequence

from .config import ProtectionConfig
from .images import DecodedImage, FailedImage, ImageError, ProtectedImage
from .method.engine import ProtectionEngine
from .method.fit import FitResult, fit_surrogate
from .models import Surrogate, SurrogateRef
from .models.runtime import Tuning
from .models.session import SurrogateSession
from .sinks.quarantine import append_quarantine
from .sources.errors import ColumnError
from .sources.columns import check_dataset, raw_image_column, sample_rows, stored_image_column as stored_column
from .sources.paths import data_image_value, load_data_image

logger = logging.getLogger(__name__)

PROVENANCE_FEATURES = {"udp_key": "string", "udp_source_sha256": "string", "udp_sha256": "string",
                       "udp_width": "int32", "udp_height": "int32", "udp_linf": "int32", "udp_psnr": "float64"}
"""The ``udp_*`` columns manifests are built from (each a :class:`ProtectedImage` field), and their types."""
PROVENANCE_COLUMNS = tuple(PROVENANCE_FEATURES)


class Protector:
    """Protects images with UDP / EUDP; callable as a datasets batched map function.

    Args:
        config: the protection recipe.
        image_column: the column holding images (PIL, ``{"bytes", "path"}``, bytes or paths).
        key_column: optional column of stable sample ids that seed per-sample randomness;
            by default the hash of the decoded pixels is the key.
        errors: ``"raise"`` (default) stops at the first bad image with its index and reason; ``"quarantine"``
            leaves bad rows out of the output and appends a JSON line (key, index, reason) to ``errors_file``.
            Nothing unprotected is ever returned.
        errors_file: where quarantined records go (required with ``errors="quarantine"``).
        provenance_columns: add ``udp_*`` columns (key, source / output SHA-256, L-inf levels, PSNR) that
            manifests are built from.
        surrogate: an already loaded surrogate (kept in this process only; workers reload it from ``config.surrogate``).
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
        self.engine = ProtectionEngine(SurrogateSession(config or ProtectionConfig(), surrogate, tuning))
        self.image_column, self.key_column, self.errors = image_column, key_column, errors
        self.errors_file = str(errors_file) if errors_file is not None else None
        self.provenance_columns, self.max_pixels, self.progress = provenance_columns, max_pixels, progress
        self.image_root = str(Path(image_root).expanduser().resolve()) if image_root is not None else None
        self.fit_result: FitResult | None = None

    def __getstate__(self) -> dict[str, Any]:
        """The engine (config, weight hashes) + options: never the weights (a stable fingerprint)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("fit_result", "progress")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, fit_result=None, progress=False)

    @property
    def config(self) -> ProtectionConfig:
        return self.engine.session.config

    @config.setter
    def config(self, value: ProtectionConfig) -> None:
        self.engine.session.config = value

    @property
    def surrogate_ref(self) -> SurrogateRef | None:
        """What the surrogate is (kind, source, weight hash), as recorded in provenance."""
        return self.engine.session.ref

    def prepare_surrogate(self, rank: int | None = None) -> Surrogate:
        """Load the surrogate once, put it on this worker's device, frozen, and return it."""
        return self.engine.prepare(rank)

    @property
    def tuning(self) -> Tuning:
        """The speed switches in force (resolved for the device by :meth:`prepare_surrogate`)."""
        return self.engine.session.tuning

    def fit(self, data: Any, output_dir: str | os.PathLike | None = None,
            image_column: str | None = None) -> FitResult:
        """Train the surrogate on (a subset of) the data and save it; returns the loss history.

        ``data`` is a datasets ``Dataset`` (its ``image_column`` is read) or any iterable of images. With
        ``unlearnable`` this is the min-min co-training; with ``adversarial`` the surrogate is trained on the
        clean images. The fitted model is saved as safetensors to ``output_dir`` (default: a cache folder keyed
        by config and data), and ``self.config.surrogate`` then points at it, so workers and re-runs load
        exactly these weights.
        """
        from_data = hasattr(data, "column_names") and hasattr(data, "select")  # a path in data opens in image_root only
        values, all_captions = sample_rows(data, image_column or self.image_column, self.config.caption_column,
                                           self.config.fit_max_samples, self.config.seed)
        decoded = self._decode(values, [str(i) for i in range(len(values))], from_data)
        failed = [d for d in decoded if isinstance(d, FailedImage)]
        for f in failed:
            logger.warning("fit: skipping sample %s: %s", f.key, f.reason)
        if failed:
            logger.warning("fit: %d of %d images could not be decoded and were skipped", len(failed), len(values))
        good = [(i, d) for i, d in enumerate(decoded) if isinstance(d, DecodedImage)]
        if not good:
            raise ImageError("fit: no decodable image in the data" + (f" (the last one: {failed[-1].reason})"
                                                                     if failed else ""))
        keys = [d.pixel_sha256() for _, d in good]
        captions = [all_captions[i] for i, _ in good] if all_captions is not None else None
        surrogate = self.engine.session.fresh()
        result = fit_surrogate(surrogate, [d.pixels for _, d in good], keys, self.config, progress=self.progress,
                               captions=captions)
        self.engine.session.adopt(surrogate, output_dir, result.to_dict(), keys)
        self.fit_result = result
        return result

    def _decode(self, values: Sequence[Any], names: Sequence[str], from_data: bool) -> list[DecodedImage | FailedImage]:
        """Each value decoded under the path rule (:func:`~udp_datasets.sources.paths.load_data_image`), or why not."""
        decoded: list[DecodedImage | FailedImage] = []
        for i, (value, name) in enumerate(zip(values, names)):
            try:
                decoded.append(load_data_image(value, name, self.image_root, from_data=from_data,
                                               max_pixels=self.max_pixels))
            except ImageError as exc:
                decoded.append(FailedImage(key=name, index=i, reason=exc.reason))
            except MemoryError:
                decoded.append(FailedImage(key=name, index=i, reason="not enough memory to decode this image"))
        return decoded

    # -------------------------------------------------------------- protect
    def protect_images(self, images: Sequence[Any], keys: Sequence[str] | None = None,
                       rank: int | None = None, names: Sequence[str] | None = None,
                       captions: Sequence[str | None] | None = None,
                       ) -> list[ProtectedImage | FailedImage]:
        """Protect a list of images; failures come back as :class:`FailedImage` records.

        ``keys`` seed each sample's randomness (default: its pixel hash); ``names`` only label failures (default:
        the key, else the position); ``captions`` fill the ``{caption}`` of a text-conditioned surrogate's prompt.
        """
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"{len(captions)} captions for {len(images)} images")
        labels = [str(keys[i]) if keys is not None else (names[i] if names is not None else f"item {i}")
                  for i in range(len(images))]
        decoded = self._decode(images, labels, from_data=False)
        final_keys = [d.key if isinstance(d, FailedImage) else (str(keys[i]) if keys is not None else d.pixel_sha256())
                      for i, d in enumerate(decoded)]
        return self.engine.protect(decoded, final_keys, labels, captions, rank)

    # ----------------------------------------------------- datasets map API
    def __call__(self, batch: dict[str, list[Any]], indices_or_rank: Any = None,
                 rank: int | None = None) -> dict[str, list[Any]]:
        """Batched map function: returns the batch with protected PNG images.

        Use ``ds.map(protector, batched=True)``; ``with_rank=True`` picks the GPU per
        worker and ``with_indices=True`` makes error messages name dataset rows.
        Bad rows raise, or are dropped and recorded with ``errors="quarantine"``.
        """
        indices = list(indices_or_rank) if isinstance(indices_or_rank, (list, tuple, range)) else None
        if indices is None and indices_or_rank is not None:
            rank = indices_or_rank
        for what, name in (("image", self.image_column), ("key", self.key_column),
                           ("caption", self.config.caption_column)):
            if name is not None and name not in batch:
                raise ColumnError(f"{what} column {name!r} not found; the batch has columns {sorted(batch)}"
                                  + (" (pass image_column=...)" if what == "image" else ""))
        keys = [str(k) for k in batch[self.key_column]] if self.key_column is not None else None
        caption_column = self.config.caption_column
        captions = list(batch[caption_column]) if caption_column is not None else None
        # as stored, before datasets' decoder: a corrupt file is quarantined by name, a path opened only in image_root
        values = [data_image_value(v, self.image_root) for v in stored_column(batch, self.image_column)]
        names = [_describe(v, i if indices is None else indices[i], indices is not None) for i, v in enumerate(values)]
        results = self.protect_images(values, keys=keys, rank=rank, names=names, captions=captions)
        failed = [r for r in results if isinstance(r, FailedImage)]
        for f in failed if indices is not None else ():
            f.index = indices[f.index]  # the dataset's row, not the position in this batch
        if failed and self.errors == "raise":
            raise ImageError(f"{failed[0].reason} (use errors='quarantine' to skip bad images and record them)",
                             failed[0].key)
        if failed:
            assert self.errors_file is not None
            append_quarantine(self.errors_file, failed)
        keep = [i for i, r in enumerate(results) if isinstance(r, ProtectedImage)]
        out = {name: [] if name == self.image_column else [batch[name][i] for i in keep] for name in batch.keys()}
        good: list[ProtectedImage] = [results[i] for i in keep]  # type: ignore[misc]
        out[self.image_column] = [{"bytes": r.png, "path": None} for r in good]
        for name in PROVENANCE_COLUMNS if self.provenance_columns else ():
            values = [getattr(r, name[len("udp_"):]) for r in good]
            out[name] = [v if math.isfinite(v) else None for v in values] if name == "udp_psnr" else values
        return out

    def map(self, ds: Any, batch_size: int | None = None, num_proc: int | None = None, **map_kwargs: Any):
        """``ds.map(self, ...)`` done robustly: images reach the protector as raw bytes.

        Plain ``ds.map(protector)`` works too, but with a decoding ``Image()`` column a corrupt file fails inside
        datasets' decoder before the protector can quarantine it, and the source hash is of re-encoded pixels
        rather than the original file. This casts the column to ``Image(decode=False)`` first and back afterwards.
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
            feats.update({name: Value(dtype) for name, dtype in PROVENANCE_FEATURES.items()})
        return feats


def _describe(value: Any, index: int, global_index: bool) -> str:
    """A human name for a sample in error messages: its file path if known, else its row."""
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return f"row {index}" if global_index else f"batch row {index}"
