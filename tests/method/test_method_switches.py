"""Method switches of the fit and PGD, each measured by ``ablation --switches``: surrogate pools,
gradient matching, clusters."""

import numpy as np
import pytest
import torch

from udp_datasets import ConfigError, ProtectionConfig, Protector, SurrogateError, load_surrogate
from udp_datasets.method.clusters import cluster_features, cluster_init, kmeans
from udp_datasets.method.fit import _stage_rounds
from udp_datasets.images import decode_png_pixels
from udp_datasets.method.pgd import sample_generator

from conftest import TINY


def _x(images):
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


def _fit(images, tmp_path, **changes) -> Protector:
    protector = Protector(TINY.replace(**changes), progress=False)
    protector.fit(images, output_dir=tmp_path / "surrogate")
    return protector


def test_stage_rounds_are_evenly_spaced_and_exclude_the_final_weights():
    assert _stage_rounds(8, 1) == []
    assert _stage_rounds(9, 3) == [2, 5]
    assert _stage_rounds(2, 4) == [0, 1]  # more stages than rounds: each round at most once


def test_pool_stages_are_saved_and_cycled_by_pgd(photos32, tmp_path):
    protector = _fit(photos32, tmp_path, objective="unlearnable", fit_pool=3)
    surrogate = load_surrogate(protector.config.surrogate)
    assert surrogate.num_stages() == 2
    final = dict(surrogate.unet.named_parameters())
    stage0 = surrogate.extras_group("stage0")
    assert set(stage0) == set(final)
    assert any(not torch.equal(stage0[k], final[k]) for k in final)  # an earlier point of training
    protector.prepare_surrogate()
    objective = protector.engine.objective
    assert len(objective._members) == 3
    # the same draw under two pool members gives two different losses
    x = _x(photos32[:4])
    t, w, noise = objective.draw([sample_generator(0, str(i)) for i in range(4)])
    assert not torch.allclose(objective.loss(x, t, w, noise, step=0), objective.loss(x, t, w, noise, step=2))


def test_matching_lowers_the_directional_derivative_along_the_clean_gradient(photos32, tmp_path):
    protector = _fit(photos32, tmp_path, objective="matching", steps=10, timesteps="range", t_max=200)
    surrogate = load_surrogate(protector.config.surrogate)
    direction = surrogate.extras_group("direction-1")
    norm = torch.sqrt(sum(v.pow(2).sum() for v in direction.values()))
    assert abs(float(norm) - 1) < 1e-4
    images = photos32[:8]
    protected = [decode_png_pixels(r.png) for r in protector.protect_images(images)]
    protector.prepare_surrogate()
    gens = lambda: [sample_generator(3, f"m{i}") for i in range(8)]  # noqa: E731
    before = protector.engine.objective.evaluate(_x(images), gens(), repeats=6)
    after = protector.engine.objective.evaluate(_x(protected), gens(), repeats=6)
    assert after.mean() < before.mean()
    assert not protector.engine.objective.maximize


def test_matching_without_a_direction_is_refused(adversarial_surrogate, photos32):
    protector = Protector(TINY.replace(objective="matching", surrogate=adversarial_surrogate), progress=False)
    with pytest.raises(SurrogateError, match="clean-loss gradient direction"):
        protector.protect_images(photos32[:1])


def test_kmeans_recovers_separated_groups():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.01, (20, 5)), rng.normal(1, 0.01, (30, 5))
    _, assign = kmeans(torch.from_numpy(np.concatenate([a, b])), 2, seed=0)
    assert len(set(assign[:20].tolist())) == 1 and len(set(assign[20:].tolist())) == 1
    assert assign[0] != assign[20]


def test_clusters_share_one_delta_and_seed_the_transform(photos32, tmp_path):
    protector = _fit(photos32, tmp_path, objective="unlearnable", clusters=3, steps=1)
    surrogate = load_surrogate(protector.config.surrogate)
    centroids, deltas = surrogate.extras["clusters.centroids"], surrogate.extras["clusters.deltas"]
    assert centroids.shape == (3, 3 * 8 * 8) and deltas.shape == (3, 3, 16, 16)
    assert deltas.abs().max() <= TINY.budget_levels / 255 + 1e-6 and deltas.abs().sum() > 0
    x = _x(photos32)
    init = cluster_init(x, centroids, deltas, TINY.budget_levels / 255)
    assert init.shape == x.shape
    # images in one cluster start from the same (resized) delta
    idx = torch.cdist(cluster_features(x), centroids).argmin(1)
    same = [i for i in range(len(idx)) if idx[i] == idx[0]]
    if len(same) > 1:
        assert torch.equal(init[same[0]], init[same[1]])
    out = [decode_png_pixels(r.png) for r in protector.protect_images(photos32[:4])]
    for clean, prot in zip(photos32[:4], out):
        assert 0 < np.abs(prot.astype(int) - clean).max() <= TINY.budget_levels


def test_lead_switches_are_validated():
    with pytest.raises(ConfigError, match="clusters=4 .* objective='unlearnable'"):
        ProtectionConfig(clusters=4, objective="adversarial")
    with pytest.raises(ConfigError, match="fit_lora_rank=0"):
        ProtectionConfig(fit_pool=2, fit_lora_rank=4)
    with pytest.raises(ConfigError, match="fit_pool"):
        ProtectionConfig(fit_pool=0)
