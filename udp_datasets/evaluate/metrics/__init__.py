"""Metrics of the efficacy evaluation: pure functions, plus the feature extractors and a scorer.

The evaluation trains victim diffusion models on clean and on protected data and compares
what they generate with held-out clean images. Each module answers one question:

* ``arrays`` — the input rules (image batches in [0, 1], ``(N, C, H, W)``; feature sets);
* ``distribution`` — did the victim learn the clean distribution? (Fréchet distance,
  precision / recall);
* ``artifacts`` — does the victim make noisy or textured samples? (high-frequency energy,
  colour noise);
* ``fidelity`` — how visible is the protection itself? (PSNR and SSIM from torchmetrics, L-inf);
* ``features`` — the feature extractors (fitted offline default, Inception if on disk);
* ``scorer`` — one sample set against a held-out split, in one fitted feature space.

This package re-exports the pure functions, so ``from udp_datasets.evaluate.metrics import psnr``
works as it did when ``metrics`` was one module.
"""

from .arrays import Features, ImageBatch, hwc_to_nchw
from .artifacts import artifact_ratio, colour_noise, colour_noise_ratio, high_frequency_energy, radial_frequency
from .distribution import feature_statistics, frechet_distance, frechet_distance_from_features, precision_recall
from .fidelity import linf_levels, perturbation_cost, psnr, psnr_per_image, ssim, ssim_per_image

__all__ = [
    "ImageBatch", "Features", "hwc_to_nchw",
    "frechet_distance", "frechet_distance_from_features", "feature_statistics", "precision_recall",
    "high_frequency_energy", "radial_frequency", "artifact_ratio", "colour_noise", "colour_noise_ratio",
    "psnr", "psnr_per_image", "ssim", "ssim_per_image", "linf_levels", "perturbation_cost",
]
