"""Scores of one sample set against a held-out clean split, in one fitted feature space."""

from __future__ import annotations

from typing import Any, Protocol


from ..data import Images
from .arrays import hwc_to_nchw
from .artifacts import artifact_ratio, colour_noise_ratio
from .distribution import frechet_distance_from_features, precision_recall
from .features import get_feature_extractor


class ScoringSettings(Protocol):
    """What a :class:`Scorer` reads of its settings (``experiments.victim_runs.EvalSettings`` has it)."""

    feature: str
    feature_kwargs: dict[str, Any]
    seed: int


class Scorer:
    """Scores sample sets against the held-out split with one fitted feature extractor.

    ``train`` and ``holdout`` are (H, W, C) uint8 images of one size; the extractor is fitted on
    ``train`` (the clean TRAINING images) only.
    """

    def __init__(self, train: Images, holdout: Images, settings: ScoringSettings):
        # kept so a recipe can build a second scorer from the same split (e.g. VAE round trips)
        self.train_images, self.holdout_images, self.settings = train, holdout, settings
        self.extractor = get_feature_extractor(settings.feature, **settings.feature_kwargs)
        if hasattr(self.extractor, "fit"):
            self.extractor.fit(hwc_to_nchw(train).numpy(), seed=settings.seed)  # clean TRAINING images only
        self.holdout = hwc_to_nchw(holdout).numpy()
        self.holdout_features = self.extractor(self.holdout)

    def score(self, samples: Images) -> dict[str, float]:
        """FD, precision, recall and the artefact ratios of ``samples`` against the held-out split."""
        x = hwc_to_nchw(samples).numpy()
        feats = self.extractor(x)
        k = max(1, min(3, len(feats) - 1, len(self.holdout_features) - 1))  # tiny sets: smaller k
        precision, recall = precision_recall(self.holdout_features, feats, k=k)
        return {
            "fd": float(frechet_distance_from_features(self.holdout_features, feats)),
            "precision": float(precision), "recall": float(recall),
            "artifact_ratio": float(artifact_ratio(x, self.holdout)),
            "colour_noise_ratio": float(colour_noise_ratio(x, self.holdout)),
        }
