"""Feature extractors for the Fréchet distance and precision / recall.

Two extractors share one calling convention, ``extractor(images) -> (N, D) float64 array`` with
images as in :mod:`udp_datasets.evaluate.metrics` (``(N, C, H, W)`` in [0, 1], torch or numpy,
any resolution, grey or RGB):

* :class:`FittedFeatureExtractor` (``"fitted"``, the offline default) — fixed random
  convolutions + PCA whitening fitted on the CLEAN TRAINING images of the evaluation run. It is
  **not** Inception: its Fréchet distances are not FID and are comparable only between sets
  scored by the *same* fitted extractor (one evaluation run; see :attr:`fingerprint`).
* :class:`InceptionFeatureExtractor` (``"inception"``) — the standard FID Inception-v3 pool3
  features, if (and only if) the weights are already on disk. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from ...models.devices import resolve_device
from .arrays import ImageBatch, as_images

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureExtractor", "FeatureExtractorUnavailable", "FittedFeatureExtractor",
    "InceptionFeatureExtractor", "get_feature_extractor", "FEATURE_EXTRACTORS",
    "INCEPTION_TORCHSCRIPT_FILE", "INCEPTION_FIDELITY_FILE", "INCEPTION_WEIGHTS_ENV",
]

Images = Union[ImageBatch, Sequence[ImageBatch]]


class FeatureExtractorUnavailable(RuntimeError):
    """The requested extractor cannot run here (missing package or weights); the message says
    how to supply it offline."""


@runtime_checkable
class FeatureExtractor(Protocol):
    """What the evaluation needs from an extractor."""

    name: str

    def __call__(self, images: Images) -> np.ndarray: ...


def _iter_batches(images: Images, batch_size: int):
    """Yield (n, C, H, W) float32 tensors in [0, 1] from a batch or a list of batches/images.

    A list may mix resolutions (each item is resized by the extractor); a 3-D item is one image.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)):
        yield from _split(as_images(images), batch_size)
        return
    items = list(images)
    if not items:
        raise ValueError("no images given")
    pending: list[torch.Tensor] = []  # consecutive items of one shape, stacked into full batches
    count = 0
    for item in items:
        t = as_images(item)
        if pending and pending[0].shape[1:] != t.shape[1:]:
            yield from _split(torch.cat(pending), batch_size)
            pending, count = [], 0
        pending.append(t)
        count += t.shape[0]
        if count >= batch_size:
            yield from _split(torch.cat(pending), batch_size)
            pending, count = [], 0
    if pending:
        yield from _split(torch.cat(pending), batch_size)


def _split(t: torch.Tensor, batch_size: int):
    for i in range(0, t.shape[0], batch_size):
        yield t[i:i + batch_size]


def _to_rgb(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ValueError(f"expected grey (1) or RGB (3) channels, got {x.shape[1]}")
    return x


# --------------------------------------------------------------------------- fitted (default)

_FORMAT = "udp-datasets/fitted-feature-extractor"
_FORMAT_VERSION = 1


class FittedFeatureExtractor:
    """Random-convolution image statistics, PCA-whitened on the clean training images. Offline.

    Why this design (it is NOT Inception; numbers compare only within one evaluation run):

    * **Random conv features.** Untrained convolutional networks already give useful embeddings
      for distribution metrics (Naeem et al. 2020 compute FD / precision / recall with a randomly
      initialised VGG). Here two fixed random conv layers (``width1`` zero-mean 5x5 filters, then
      ``width2`` 3x3 filters, ReLU after each) run at three scales (the image resized to ``size``,
      then /2 and /4). Per scale, four *blocks* of statistics are pooled: texture (log mean layer-1
      response), structure (log mean layer-2 response), layout (layer 2 on a 2x2 grid) and detail
      (log energy of the Laplacian-pyramid band per channel); plus one colour block (per-channel
      mean and contrast). Blur removes fine-scale energy, noise adds it, colour casts move the
      colour block, misplaced or missing content moves structure and layout.
    * **Block-wise PCA whitening, fitted only on the CLEAN TRAINING images** (never on generated
      images, so the extractor cannot adapt to what it judges). Each block is standardised and
      reduced to its top ``block_dim`` whitened principal components, so every aspect counts
      equally in the Fréchet distance and a block with many raw features (layout) cannot drown
      the others. Keeping only the well-estimated leading components avoids the noise blow-up of
      whitening everything with a few hundred images; the output is small (<= 13 x ``block_dim``
      dimensions), which keeps the Fréchet distance's finite-sample bias (~ D^2 / N) low for
      evaluation sets of a few hundred images. Compare FDs only at equal sample sizes.
    * **Deterministic**: filters come from a seeded ``torch.Generator`` and are stored in the
      saved file (a reload does not depend on another torch version's RNG); PCA is an SVD.
      About 1000 images of 32x32 fit in a few seconds on 2 CPU cores.

    Inputs are resized to ``size`` x ``size`` with ``interpolate(..., antialias=True)``, so any
    resolution works; grey images are expanded to three channels. ``size=None`` (default) picks
    the clean training images' resolution at :meth:`fit` (rounded to a multiple of 4, clamped to
    [16, 128]), so the extractor sees the detail level the victim is trained on.
    """

    name = "fitted"
    SCALES = (1, 2, 4)

    def __init__(self, size: int | None = None, block_dim: int = 4, width1: int = 32, width2: int = 48,
                 batch_size: int = 256):
        if size is not None and (size < 16 or size % 4):
            raise ValueError(f"size must be a multiple of 4 and >= 16, got {size}")
        if block_dim < 1:
            raise ValueError(f"block_dim must be >= 1, got {block_dim}")
        self.size, self.block_dim, self.width1, self.width2 = size, block_dim, width1, width2
        self.batch_size = batch_size
        self.seed: int | None = None
        self.n_fit: int | None = None
        self._tensors: dict[str, torch.Tensor] | None = None

    # -- state

    @property
    def fitted(self) -> bool:
        return self._tensors is not None

    def _require_fitted(self) -> dict[str, torch.Tensor]:
        if self._tensors is None:
            raise RuntimeError("FittedFeatureExtractor is not fitted: call fit(clean_train_images) or load(path)")
        return self._tensors

    @property
    def out_dim(self) -> int:
        """Number of output features D."""
        return int(self._require_fitted()["components"].shape[0])

    @property
    def fingerprint(self) -> str:
        """Short hash of config + weights: two FDs are comparable only if this matches."""
        h = hashlib.sha256(json.dumps(self._config(), sort_keys=True).encode())
        for key, t in sorted(self._require_fitted().items()):
            h.update(key.encode())
            h.update(t.contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def _config(self) -> dict[str, Any]:
        return dict(size=self.size, block_dim=self.block_dim, width1=self.width1, width2=self.width2,
                    seed=self.seed, n_fit=self.n_fit)

    def __repr__(self) -> str:
        state = (f"fitted on {self.n_fit} images, seed {self.seed}, {self.out_dim} features"
                 if self.fitted else "not fitted")
        return f"FittedFeatureExtractor(size={self.size}, block_dim={self.block_dim}, {state})"

    # -- network

    @staticmethod
    def _random_filters(gen: torch.Generator, out_ch: int, in_ch: int, k: int, zero_mean: bool) -> torch.Tensor:
        w = torch.randn(out_ch, in_ch, k, k, generator=gen, dtype=torch.float64)
        if zero_mean:  # respond to structure, not to flat brightness (the colour block covers that)
            w = w - w.mean(dim=(1, 2, 3), keepdim=True)
        w = w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return w.float()

    def _prepare(self, x: torch.Tensor, size: int) -> torch.Tensor:
        x = _to_rgb(x.float())
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True).clamp(0, 1)
        return x * 2 - 1

    def _blocks(self, x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> list[torch.Tensor]:
        """Raw statistics of one prepared batch, as a list of (n, p_b) blocks in a fixed order."""
        blocks = [torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)]
        for scale in self.SCALES:
            xs = F.avg_pool2d(x, scale) if scale > 1 else x
            h1 = F.relu(F.conv2d(F.pad(xs, (2, 2, 2, 2), mode="reflect"), w1))
            h2 = F.relu(F.conv2d(F.pad(h1, (1, 1, 1, 1), mode="reflect"), w2))
            coarse = F.interpolate(F.avg_pool2d(xs, 2), scale_factor=2, mode="bilinear", align_corners=False)
            blocks += [
                torch.log(h1.mean(dim=(2, 3)) + 1e-4),                       # texture
                torch.log(h2.mean(dim=(2, 3)) + 1e-4),                       # structure
                torch.log(F.adaptive_avg_pool2d(h2, 2).flatten(1) + 1e-4),   # layout
                torch.log((xs - coarse).square().mean(dim=(2, 3)) + 1e-6),   # detail
            ]
        return blocks

    def _raw_blocks(self, images: Images, size: int, w1: torch.Tensor, w2: torch.Tensor) -> list[torch.Tensor]:
        parts: list[list[torch.Tensor]] = []
        with torch.no_grad():
            for batch in _iter_batches(images, self.batch_size):
                parts.append([b.double() for b in self._blocks(self._prepare(batch, size), w1, w2)])
        if not parts:
            raise ValueError("no images given")
        return [torch.cat(col) for col in zip(*parts)]

    @staticmethod
    def _auto_size(images: Images) -> int:
        first = images if isinstance(images, (np.ndarray, torch.Tensor)) else next(iter(images))
        h, w = as_images(first).shape[-2:]
        return int(min(max(4 * round(max(h, w) / 4), 16), 128))

    # -- public API

    def fit(self, images: Images, seed: int = 0) -> FittedFeatureExtractor:
        """Draw the random filters from ``seed`` and fit the block-wise standardisation + PCA
        whitening on ``images`` — the CLEAN TRAINING images only. Returns ``self``."""
        if not isinstance(images, (np.ndarray, torch.Tensor)):
            images = list(images)  # a generator would lose the item _auto_size looks at
        if self.size is None:
            self.size = self._auto_size(images)
        gen = torch.Generator().manual_seed(int(seed))
        w1 = self._random_filters(gen, self.width1, 3, 5, zero_mean=True)
        w2 = self._random_filters(gen, self.width2, self.width1, 3, zero_mean=False)
        blocks = self._raw_blocks(images, self.size, w1, w2)
        n = blocks[0].shape[0]
        if n < 3:
            raise ValueError(f"need at least 3 images to fit the feature extractor, got {n}")
        means, stds, rows = [], [], []
        offset, total = 0, sum(b.shape[1] for b in blocks)
        for raw in blocks:
            p = raw.shape[1]
            mean, std = raw.mean(dim=0), raw.std(dim=0)
            std = torch.where(std > 1e-6, std, torch.ones_like(std))  # constant features: leave as 0
            _, s, vh = torch.linalg.svd((raw - mean) / std, full_matrices=False)
            var = s.square() / (n - 1)
            # Keep only components that really vary: grey data makes the colour block rank 2, etc.
            keep = min(self.block_dim, int((var > 1e-8 * max(float(var[0]), 1e-30)).sum()))
            comp = torch.zeros(keep, total, dtype=torch.float64)
            comp[:, offset:offset + p] = vh[:keep] / var[:keep].sqrt().unsqueeze(1)
            means.append(mean)
            stds.append(std)
            rows.append(comp)
            offset += p
        components = torch.cat(rows)
        if components.shape[0] == 0:
            raise ValueError("the fitting images carry no variation (all identical?)")
        self._tensors = {"w1": w1, "w2": w2, "mean": torch.cat(means), "std": torch.cat(stds),
                         "components": components}
        self.seed, self.n_fit = int(seed), n
        if n < 4 * components.shape[0]:
            logger.warning("fitted features: only %d clean images for %d output features; the whitening "
                           "is poorly estimated (use >= %d images)", n, components.shape[0],
                           4 * components.shape[0])
        logger.info("fitted feature extractor on %d clean images at %dpx: %d raw -> %d whitened "
                    "features, fingerprint %s", n, self.size, total, components.shape[0], self.fingerprint)
        return self

    def __call__(self, images: Images) -> np.ndarray:
        """``(N, D)`` float64 features; on the clean training data ~zero mean, ~identity covariance."""
        t = self._require_fitted()
        assert self.size is not None
        raw = torch.cat(self._raw_blocks(images, self.size, t["w1"], t["w2"]), dim=1)
        return (((raw - t["mean"]) / t["std"]) @ t["components"].T).numpy()

    def save(self, path: str | os.PathLike) -> Path:
        """Write filters and whitening to one ``.safetensors`` file (config in its metadata)."""
        from safetensors.torch import save_file

        tensors = self._require_fitted()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": _FORMAT, "version": str(_FORMAT_VERSION), "config": json.dumps(self._config())}
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedFeatureExtractor:
        """Read a file written by :meth:`save`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no fitted feature extractor at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise ValueError(f"{path} is not a fitted feature extractor file (format {meta.get('format')!r})")
            if int(meta.get("version", "0")) > _FORMAT_VERSION:
                raise ValueError(f"{path} was written by a newer udp-datasets (format version {meta['version']})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        missing = {"w1", "w2", "mean", "std", "components"} - tensors.keys()
        if missing:
            raise ValueError(f"{path} lacks tensors {sorted(missing)}")
        config = json.loads(meta["config"])
        obj = cls(size=config["size"], block_dim=config["block_dim"], width1=config["width1"],
                  width2=config["width2"])
        obj.seed, obj.n_fit = config.get("seed"), config.get("n_fit")
        obj._tensors = tensors
        return obj


# --------------------------------------------------------------------------- Inception (optional)

INCEPTION_WEIGHTS_ENV = "UDP_DATASETS_INCEPTION_WEIGHTS"
# NVIDIA's TorchScript FID Inception (StyleGAN2-ADA / StyleGAN3 / clean-fid): needs only torch.
INCEPTION_TORCHSCRIPT_FILE = "inception-2015-12-05.pt"
# torch-fidelity's state dict (also used by torchmetrics' FID), loaded into torch-fidelity's model.
INCEPTION_FIDELITY_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _unavailable_message(reason: str) -> str:
    ckpt = _hub_checkpoints()
    return (
        f"Inception features are unavailable: {reason}. Nothing is downloaded; supply the FID "
        "Inception weights offline, then retry (or use the offline default extractor 'fitted'):\n"
        f"  * pass the file explicitly: --inception-weights PATH (or weights_path=PATH, or set "
        f"{INCEPTION_WEIGHTS_ENV}=PATH), where PATH is either NVIDIA's TorchScript "
        f"'{INCEPTION_TORCHSCRIPT_FILE}' (needs only torch) or torch-fidelity's "
        f"'{INCEPTION_FIDELITY_FILE}' (needs `pip install torch-fidelity`);\n"
        f"  * or place one of those files in torch's hub cache, {ckpt} (set TORCH_HOME to move it), "
        "where torch-fidelity / torchmetrics also look for their cached copy.\n"
        "pytorch-fid's 'pt_inception-2015-12-05-6726825d.pth' is not used directly: its model needs "
        "torchvision, which udp-datasets does not depend on."
    )


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in name or name.startswith("code/") for name in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


class InceptionFeatureExtractor:
    """FID Inception-v3 pool3 features (2048-D), only from weights already on disk.

    Backends, chosen by the weights file: NVIDIA's TorchScript ``inception-2015-12-05.pt``
    (loaded with ``torch.jit.load``; no extra package) or torch-fidelity's
    ``weights-inception-2015-12-05-6726825d.pth`` (needs the optional ``torch-fidelity``
    package, imported lazily). Without ``weights_path`` the file comes from
    ``$UDP_DATASETS_INCEPTION_WEIGHTS`` or torch's hub cache (``$TORCH_HOME/hub/checkpoints``).
    The download path of those libraries is never taken: a missing file raises
    :class:`FeatureExtractorUnavailable` with instructions. Images are rounded to 8-bit levels,
    as FID is defined on stored images, and resized to 299 inside the network.
    """

    name = "inception"

    def __init__(self, weights_path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 64):
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.batch_size = batch_size
        self.weights_path, self.backend = self._resolve(weights_path)
        self._model = self._load()
        logger.info("Inception features: %s backend, weights %s", self.backend, self.weights_path)

    @staticmethod
    def _resolve(weights_path: str | os.PathLike | None) -> tuple[Path, str]:
        if weights_path is None and os.environ.get(INCEPTION_WEIGHTS_ENV):
            weights_path = os.environ[INCEPTION_WEIGHTS_ENV]
        if weights_path is not None:
            path = Path(weights_path).expanduser()
            if not path.is_file():
                raise FeatureExtractorUnavailable(_unavailable_message(f"no weights file at {path}"))
            return path, "torchscript" if _is_torchscript(path) else "torch-fidelity"
        ckpt = _hub_checkpoints()
        candidates = [(ckpt / INCEPTION_TORCHSCRIPT_FILE, "torchscript"),
                      (ckpt / INCEPTION_FIDELITY_FILE, "torch-fidelity")]
        for path, backend in candidates:
            if path.is_file():
                return path, backend
        raise FeatureExtractorUnavailable(_unavailable_message(f"no weights file in {ckpt}"))

    def _load(self) -> torch.nn.Module:
        if self.backend == "torchscript":
            try:
                with warnings.catch_warnings():  # TorchScript is deprecated, but this file is TorchScript
                    warnings.simplefilter("ignore", DeprecationWarning)
                    model = torch.jit.load(str(self.weights_path), map_location=self.device)
            except Exception as exc:  # noqa: BLE001 - any failure means: not usable weights
                raise FeatureExtractorUnavailable(
                    _unavailable_message(f"{self.weights_path} could not be loaded as TorchScript ({exc})")) from exc
            return model.eval()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as exc:
            raise FeatureExtractorUnavailable(_unavailable_message(
                f"{self.weights_path} is a state dict, which needs the torch-fidelity package ({exc})")) from exc
        try:
            # An explicit path: torch-fidelity then loads this file and never calls its downloader.
            model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                feature_extractor_weights_path=str(self.weights_path))
        except Exception as exc:  # noqa: BLE001 - wrong file, wrong keys, ...
            raise FeatureExtractorUnavailable(_unavailable_message(
                f"torch-fidelity could not load {self.weights_path} ({exc})")) from exc
        return model.to(self.device).eval()

    def __call__(self, images: Images) -> np.ndarray:
        """``(N, 2048)`` float64 pool3 features."""
        out = []
        with torch.no_grad():
            for batch in _iter_batches(images, self.batch_size):
                levels = (_to_rgb(batch) * 255).round()
                if self.backend == "torchscript":
                    feats = self._model(levels.to(self.device), return_features=True)
                else:
                    feats = self._model(levels.to(torch.uint8).to(self.device))[0]
                out.append(feats.reshape(feats.shape[0], -1).double().cpu())
        return torch.cat(out).numpy()


# --------------------------------------------------------------------------- registry

FEATURE_EXTRACTORS = ("fitted", "inception")


def get_feature_extractor(name: str, **kwargs: Any) -> FittedFeatureExtractor | InceptionFeatureExtractor:
    """Build an extractor by name.

    ``"fitted"``: ``path=`` loads a saved extractor; ``images=`` (clean training images) with
    optional ``seed=`` fits a new one; other keywords go to :class:`FittedFeatureExtractor`.
    Without ``path`` or ``images`` the extractor is returned unfitted.
    ``"inception"``: keywords go to :class:`InceptionFeatureExtractor` (``weights_path``,
    ``device``, ``batch_size``); raises :class:`FeatureExtractorUnavailable` if it cannot run.
    """
    key = name.strip().lower()
    if key == "fitted":
        path = kwargs.pop("path", None)
        images = kwargs.pop("images", None)
        seed = kwargs.pop("seed", 0)
        if path is not None:
            if images is not None or kwargs:
                raise ValueError("get_feature_extractor('fitted', path=...) takes no other arguments")
            return FittedFeatureExtractor.load(path)
        extractor = FittedFeatureExtractor(**kwargs)
        return extractor.fit(images, seed=seed) if images is not None else extractor
    if key == "inception":
        return InceptionFeatureExtractor(**kwargs)
    raise ValueError(f"unknown feature extractor {name!r}; choose one of {', '.join(FEATURE_EXTRACTORS)}")
