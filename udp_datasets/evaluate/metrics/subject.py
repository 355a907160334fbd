"""Did a fine-tuned model learn the subject? The subject classifier, subject score, erasure, FD, artifacts.

The field judges protection in the few-shot regime by lost identity (a face recogniser's similarity)
and visible artifacts, much more than by FID (METHOD.md). Our subjects are an object, a stain style
and a texture at 64 px, so the judge is a **subject classifier** on fixed, hand-made features:

- colour: per-channel mean and std in RGB and in an opponent space (R - G, R + G - 2B), and a soft
  4 x 4 x 4 RGB histogram: what identifies a palette or a stain;
- texture: 48 fixed random zero-mean 5 x 5 filters (seeded) at full and half resolution, ReLU, mean
  and std pooled, plus the mean gradient magnitude at both scales: what identifies fur, cells or
  vessels.

No learned network and nothing of the VAE the protections attack (a judge built on TAEF2's encoder
would share the attacked features). Multinomial logistic regression (L2, class-balanced) over
{corpus, subject_1 .. subject_K}, trained **only on clean images**: corpus crops, each subject's
clean training images with flips and sub-crops, and the TAEF2 round trips of all of them (so the
decoder's blur, which every sample carries, is not a cue). It never sees a protected, purified or
generated image. Its accuracy on held-out subject images and other corpus crops is reported.

- **subject score** of a sample set: mean P(subject | sample);
- **erasure** (METHOD.md): (score_clean-ft - score_protected-ft) / (score_clean-ft - score_never-shown);
  1 = fine-tuning learned nothing of the subject, 0 = protection did nothing; undefined
  (``None``) when the clean fine-tune did not lift the score by :data:`MIN_LIFT` ("a victim that
  learns nothing proves nothing");
- **artifact score**: the mean of the high-frequency-energy ratio and the colour-noise ratio of the
  samples to the held-out real images (:mod:`.artifacts`; 1 = as rough as real images);
- **FD** in a 16-dimensional PCA of the standardised features, fitted on clean images (not FID;
  comparable only within one study).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .artifacts import artifact_ratio, colour_noise_ratio
from .distribution import frechet_distance_from_features

MIN_LIFT = 0.20
"""The clean fine-tune must raise the subject score by at least this much over the never-shown model
before an erasure figure counts (0.10 until 0.3: a lift of 0.13 let random noise "erase" 0.76, issue 17)."""


def _filters() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1234)
    w = torch.randn(48, 3, 5, 5, generator=gen)
    w = w - w.mean(dim=(1, 2, 3), keepdim=True)
    return w / w.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


FILTERS = _filters()


def soft_histogram(x: torch.Tensor, bins: int = 4) -> torch.Tensor:
    """Soft (triangular) RGB histogram over a bins^3 grid, normalised per image."""
    centers = (torch.arange(bins, dtype=x.dtype) + 0.5) / bins
    w = (1 - (x.unsqueeze(-1) - centers).abs() * bins).clamp(min=0)  # (B, 3, H, W, bins)
    h = torch.einsum("bhwi,bhwj,bhwk->bijk", w[:, 0], w[:, 1], w[:, 2]).flatten(1)
    return h / h.sum(1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def subject_features(x01: torch.Tensor, batch: int = 128) -> np.ndarray:
    """(N, 3, H, W) in [0, 1] -> (N, 270) float64 features (module docstring)."""
    out = []
    for i in range(0, x01.shape[0], batch):
        xb = x01[i:i + batch].float()
        r, g, b = xb[:, 0], xb[:, 1], xb[:, 2]
        opp = torch.stack([r - g, r + g - 2 * b], 1)
        parts = [xb.mean((2, 3)), xb.std((2, 3)), opp.mean((2, 3)), opp.std((2, 3)), soft_histogram(xb)]
        for scale in (1, 2):
            xs = xb if scale == 1 else F.avg_pool2d(xb, 2)
            h = F.relu(F.conv2d(xs, FILTERS, padding=2))
            grey = xs.mean(1, keepdim=True)
            gx, gy = grey[..., :, 1:] - grey[..., :, :-1], grey[..., 1:, :] - grey[..., :-1, :]
            parts += [h.mean((2, 3)), h.std((2, 3)),
                      torch.stack([gx.abs().mean((1, 2, 3)), gy.abs().mean((1, 2, 3))], 1)]
        out.append(torch.cat(parts, 1))
    return torch.cat(out).double().numpy()


def augment(x01: torch.Tensor, copies: int, seed: int) -> torch.Tensor:
    """``copies`` random sub-crops (70-100 % of the side, resized back) of each image, flipped at random."""
    gen = torch.Generator().manual_seed(seed)
    size = x01.shape[-1]
    out = []
    for i in range(x01.shape[0]):
        for _ in range(copies):
            side = int(size * (0.7 + 0.3 * float(torch.rand((), generator=gen))))
            y0, x0 = (int(torch.randint(0, size - side + 1, (), generator=gen)) for _ in range(2))
            crop = F.interpolate(x01[i:i + 1, :, y0:y0 + side, x0:x0 + side], size=(size, size), mode="bilinear",
                                 align_corners=False, antialias=True)
            out.append(crop.flip(-1) if float(torch.rand((), generator=gen)) < 0.5 else crop)
    return torch.cat(out)


class SubjectClassifier:
    """Multinomial logistic regression on standardised :func:`subject_features` (L-BFGS, L2, balanced)."""

    def __init__(self, names: Sequence[str], l2: float = 1e-2, max_iter: int = 300):
        self.names, self.l2, self.max_iter = list(names), l2, max_iter
        self.mu = self.sd = self.weight = self.bias = None

    def fit(self, features: np.ndarray, labels: np.ndarray) -> "SubjectClassifier":
        self.mu, self.sd = features.mean(0), feature_scale(features)
        x = torch.tensor((features - self.mu) / self.sd, dtype=torch.float32)
        y = torch.as_tensor(labels, dtype=torch.long)
        k = len(self.names)
        counts = torch.bincount(y, minlength=k).float().clamp_min(1)
        weights = (counts.sum() / (k * counts))[y]
        w = torch.zeros(x.shape[1], k, requires_grad=True)
        b = torch.zeros(k, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=self.max_iter, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = (F.cross_entropy(x @ w + b, y, reduction="none") * weights).mean() + self.l2 * w.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        return self

    def proba(self, x01: torch.Tensor) -> np.ndarray:
        """(N, K) class probabilities of images in [0, 1]."""
        x = torch.tensor((subject_features(x01) - self.mu) / self.sd, dtype=torch.float32)
        return torch.softmax(x @ self.weight + self.bias, 1).numpy()

    def score(self, x01: torch.Tensor, subject: str) -> float:
        """Subject score: mean P(subject | image) over the set."""
        return float(self.proba(x01)[:, self.names.index(subject)].mean())

    def state(self) -> dict[str, Any]:
        return {"names": self.names, "l2": self.l2, "mu": torch.from_numpy(self.mu), "sd": torch.from_numpy(self.sd),
                "weight": self.weight, "bias": self.bias}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "SubjectClassifier":
        clf = cls(state["names"], state["l2"])
        clf.mu, clf.sd = state["mu"].numpy(), state["sd"].numpy()
        clf.weight, clf.bias = state["weight"], state["bias"]
        return clf


def train_subject_classifier(corpus: torch.Tensor, subjects: dict[str, torch.Tensor],
                             round_trip: Callable[[torch.Tensor], torch.Tensor], copies: int = 8,
                             seed: int = 0) -> tuple[SubjectClassifier, np.ndarray]:
    """Fit on clean images only (module docstring); returns the classifier and the clean features
    (corpus and augmented subjects, with round trips) that the FD space is fitted on."""
    feats, labels = [], []
    for label, x in enumerate([corpus, *(torch.cat([s, augment(s, copies, seed + k)])
                                         for k, s in enumerate(subjects.values()))]):
        both = torch.cat([x, round_trip(x)])
        feats.append(subject_features(both))
        labels.append(np.full(len(both), label))
    features = np.concatenate(feats)
    clf = SubjectClassifier(["corpus", *subjects]).fit(features, np.concatenate(labels))
    return clf, features


def validate_classifier(clf: SubjectClassifier, corpus_heldout: torch.Tensor, subjects: dict[str, torch.Tensor],
                        round_trip: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, float]:
    """Accuracy and mean P(subject) on images the classifier never saw (other corpus crops, each
    subject's held-out images, and their TAEF2 round trips)."""
    out = {"corpus_heldout_accuracy": float((clf.proba(corpus_heldout).argmax(1) == 0).mean()),
           "corpus_heldout_roundtrip_accuracy": float((clf.proba(round_trip(corpus_heldout)).argmax(1) == 0).mean())}
    for name, x in subjects.items():
        k = clf.names.index(name)
        p, p_rt = clf.proba(x), clf.proba(round_trip(x))
        out[f"{name}_heldout_accuracy"] = float((p.argmax(1) == k).mean())
        out[f"{name}_heldout_score"] = float(p[:, k].mean())
        out[f"{name}_heldout_roundtrip_score"] = float(p_rt[:, k].mean())
    return out


def feature_scale(features: np.ndarray) -> np.ndarray:
    """Per-feature scale for standardising: the clean std, floored at a tenth of the median std.

    Why the floor: on grey or nearly grey references the colour features barely vary, and dividing a
    coloured sample's deviation by a std of 1e-3 or less made FD values of 1e5-1e6 (issue 17) that only
    said "some colour". With the floor such a feature still counts (colour in a grey domain is an error)
    but weighs at most about ten typical features.
    """
    sd = features.std(0)
    return np.hypot(sd, 0.1 * max(float(np.median(sd)), 1e-12))


class FeatureSpace:
    """FD in the top ``dims`` principal components of the standardised features of clean images."""

    def __init__(self, clean_features: np.ndarray, dims: int = 16):
        self.mu, self.sd = clean_features.mean(0), feature_scale(clean_features)
        z = (clean_features - self.mu) / self.sd
        _, _, vt = np.linalg.svd(z - z.mean(0), full_matrices=False)
        self.projection = vt[:dims].T
        self.dims = self.projection.shape[1]

    def embed(self, x01: torch.Tensor) -> np.ndarray:
        return ((subject_features(x01) - self.mu) / self.sd) @ self.projection

    def fd(self, a01: torch.Tensor, b01: torch.Tensor) -> float | None:
        """FD, or ``None`` when either set has too few images for a covariance in ``dims`` dimensions
        (fewer than dims + 2): a small folder gets no FD rather than a meaningless one."""
        if min(a01.shape[0], b01.shape[0]) < self.dims + 2:
            return None
        return float(frechet_distance_from_features(self.embed(a01), self.embed(b01)))


def artifact_score(samples01: torch.Tensor, reference01: torch.Tensor) -> float:
    """Mean of the high-frequency-energy ratio and the colour-noise ratio of samples to real images (on a
    grey domain the colour term is taken against a floor: :func:`~.artifacts.colour_noise_ratio`)."""
    return 0.5 * (artifact_ratio(samples01, reference01) + colour_noise_ratio(samples01, reference01))


def lift(clean_score: float, never_score: float) -> float:
    """How much fine-tuning on the clean images raised the subject score."""
    return clean_score - never_score


def erasure(clean_score: float, protected_score: float, never_score: float, min_lift: float = MIN_LIFT) -> float | None:
    """(clean - protected) / (clean - never-shown); ``None`` when the clean fine-tune learned too little."""
    if lift(clean_score, never_score) < min_lift:
        return None
    return (clean_score - protected_score) / (clean_score - never_score)
