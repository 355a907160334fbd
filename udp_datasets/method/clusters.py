"""Cluster-shared perturbations: one error-minimising delta per group of similar images.

Error-minimising noise stops a classifier from learning when the noise is *easier
to fit than the data*; in classification that is class-wise noise. A diffusion
model has no classes, so fit groups similar images by k-means on tiny thumbnails
and co-trains one shared delta per group (``ProtectionConfig.clusters``). The
transform assigns each image to its nearest centroid and starts PGD from that
group's delta, so images published later carry the same shortcut.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

THUMBNAIL = 8


def cluster_features(x01: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [0, 1] -> (B, 3*8*8) thumbnails (grey images repeated to RGB)."""
    if x01.shape[1] == 1:
        x01 = x01.expand(-1, 3, -1, -1)
    small = F.interpolate(x01.float(), size=(THUMBNAIL, THUMBNAIL), mode="bilinear", align_corners=False,
                          antialias=True)
    return small.flatten(1).cpu()


def kmeans(features: torch.Tensor, k: int, seed: int, iterations: int = 25) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Lloyd's k-means with k-means++ seeding: (centroids (k, F), assignment (N,))."""
    x = features.double()
    n = x.shape[0]
    if k > n:
        raise ValueError(f"clusters={k} is more than the {n} fit images")
    rng = np.random.default_rng(seed)
    centroids = [x[int(rng.integers(n))]]
    for _ in range(1, k):
        d2 = torch.cdist(x, torch.stack(centroids)).min(1).values.pow(2).numpy()
        centroids.append(x[int(rng.choice(n, p=d2 / d2.sum()))] if d2.sum() > 0 else x[int(rng.integers(n))])
    c = torch.stack(centroids)
    for _ in range(iterations):
        assign = torch.cdist(x, c).argmin(1)
        new = torch.stack([x[assign == j].mean(0) if (assign == j).any() else c[j] for j in range(k)])
        if torch.allclose(new, c):
            break
        c = new
    return c.float(), torch.cdist(x, c).argmin(1)


def nearest(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return torch.cdist(features.float(), centroids.float()).argmin(1)


def cluster_init(x01: torch.Tensor, centroids: torch.Tensor, deltas: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Each image's starting delta: its cluster's shared delta, resized to the image and clipped."""
    idx = nearest(cluster_features(x01), centroids)
    d = deltas[idx].to(device=x01.device, dtype=x01.dtype)
    if d.shape[1] != x01.shape[1]:
        d = d.mean(1, keepdim=True).expand(-1, x01.shape[1], -1, -1)
    if tuple(d.shape[-2:]) != tuple(x01.shape[-2:]):
        d = F.interpolate(d, size=x01.shape[-2:], mode="bilinear", align_corners=False)
    return d.clamp(-epsilon, epsilon)
