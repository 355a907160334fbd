"""Metrics and feature extractors of the efficacy evaluation: known answers, reference
implementations (scikit-image) and real images that ship offline with scikit-image."""

from __future__ import annotations

import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from udp_datasets.evaluate.metrics.features import (
    INCEPTION_FIDELITY_FILE,
    INCEPTION_TORCHSCRIPT_FILE,
    INCEPTION_WEIGHTS_ENV,
    FeatureExtractorUnavailable,
    FittedFeatureExtractor,
    InceptionFeatureExtractor,
    get_feature_extractor,
)
from udp_datasets.evaluate.metrics import (
    artifact_ratio,
    colour_noise,
    colour_noise_ratio,
    feature_statistics,
    frechet_distance,
    frechet_distance_from_features,
    high_frequency_energy,
    hwc_to_nchw,
    linf_levels,
    precision_recall,
    psnr,
    psnr_per_image,
    ssim,
    ssim_per_image,
)

skdata = pytest.importorskip("skimage.data")
skmetrics = pytest.importorskip("skimage.metrics")


# --------------------------------------------------------------------------- real data

def _photo_crops(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Random square crops (48-96 px) of three photographs, resized to ``size``: (n, 3, s, s)."""
    rng = np.random.default_rng(seed)
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    out = []
    for i in range(n):
        p = photos[i % 3]
        side = int(rng.integers(48, 97))
        y, x = int(rng.integers(0, p.shape[0] - side)), int(rng.integers(0, p.shape[1] - side))
        t = torch.from_numpy(p[y:y + side, x:x + side, :3].copy()).permute(2, 0, 1)[None].float() / 255
        out.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(out).clamp(0, 1)


@pytest.fixture(scope="module")
def photo_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Disjoint clean-train / held-out A / held-out B sets of real photo crops (same distribution)."""
    x = _photo_crops(800)
    return x[:400], x[400:600], x[600:]


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    """The 200 LFW-subset crops, 25x25 grey, shuffled: (200, 1, 25, 25)."""
    x = torch.from_numpy(skdata.lfw_subset()).float()[:, None]
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]


@pytest.fixture(scope="module")
def photo_extractor(photo_split) -> FittedFeatureExtractor:
    return FittedFeatureExtractor().fit(photo_split[0], seed=0)


def _blur(x: torch.Tensor, times: int = 1) -> torch.Tensor:
    g = torch.tensor([1.0, 4, 6, 4, 1])
    k = (g[:, None] * g[None, :] / g.sum() ** 2).expand(x.shape[1], 1, 5, 5)
    for _ in range(times):
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k, groups=x.shape[1])
    return x


def _noise(x: torch.Tensor, std: float = 0.05, seed: int = 1) -> torch.Tensor:
    return (x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


# --------------------------------------------------------------------------- Fréchet distance

def test_fd_identical_features_is_zero():
    f = np.random.default_rng(0).normal(size=(400, 16))
    assert frechet_distance_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance_from_features(torch.from_numpy(f), f) == pytest.approx(0.0, abs=1e-8)


def test_fd_mean_shift_with_identity_covariance_is_squared_norm():
    m = np.array([1.0, -2.0, 0.5, 3.0])
    eye = np.eye(4)
    assert frechet_distance(np.zeros(4), eye, m, eye) == pytest.approx(float(m @ m), rel=1e-10)


def test_fd_diagonal_covariances_closed_form():
    # For commuting (diagonal) covariances: ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = float(((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum())
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fd_general_covariances_match_eigenvalue_form():
    # Tr (S1 S2)^{1/2} = sum sqrt(eig(S1 S2)) (eigenvalues of a product of SPD matrices are >= 0).
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    tr_sqrt = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(min=0)).sum()
    expected = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fd_from_samples_approaches_analytic_value():
    rng = np.random.default_rng(2)
    m = np.array([2.0, 0.0, -1.0])
    f1 = rng.normal(size=(20000, 3))
    f2 = m + 2.0 * rng.normal(size=(20000, 3))  # N(m, 4 I): ||m||^2 + 3 (1 - 2)^2 = 8
    assert frechet_distance_from_features(f1, f2) == pytest.approx(8.0, abs=0.15)


def test_fd_fewer_samples_than_dimensions_is_finite():
    f = np.random.default_rng(3).normal(size=(6, 20))  # rank-5 covariance: sqrtm is singular
    g = np.random.default_rng(4).normal(size=(6, 20))
    assert frechet_distance_from_features(f, f) == pytest.approx(0.0, abs=1e-2)
    value = frechet_distance_from_features(f, g)
    assert math.isfinite(value) and value > 0


def test_fd_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        frechet_distance_from_features(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError):
        feature_statistics(np.zeros((1, 3)))


# --------------------------------------------------------------------------- precision / recall

def test_precision_recall_identical_sets():
    f = np.random.default_rng(0).normal(size=(300, 8))
    assert precision_recall(f, f.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_disjoint_far_clusters():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(200, 4)), 100.0 + rng.normal(size=(200, 4))
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_partial_overlap_and_mode_collapse():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(1000, 2))
    # Half the fakes are realistic, half far away: precision ~ 0.5, the real support is covered.
    fake = np.concatenate([rng.normal(size=(500, 2)), 50.0 + rng.normal(size=(500, 2))])
    p, r = precision_recall(real, fake, k=3)
    assert p == pytest.approx(0.5, abs=0.03)
    assert r > 0.9
    # Mode collapse: every fake is realistic, but only one of two real modes is produced.
    real2 = np.concatenate([rng.normal(size=(500, 2)), 20.0 + rng.normal(size=(500, 2))])
    p, r = precision_recall(real2, rng.normal(size=(500, 2)), k=3)
    assert p > 0.95
    assert r == pytest.approx(0.5, abs=0.03)


def test_precision_recall_batched_equals_unbatched():
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(257, 5)), 0.5 + rng.normal(size=(131, 5))
    assert precision_recall(real, fake, batch_size=7) == precision_recall(real, fake)
    with pytest.raises(ValueError):
        precision_recall(real[:3], fake, k=3)


# --------------------------------------------------------------------------- artefact metrics

def _white_noise_expected(h: int, w: int, cutoff: float) -> float:
    """Expected HF fraction of white noise under the module's definition, derived independently.

    The orthonormal 2-D DCT of i.i.d. noise has i.i.d. coefficients, so the expected power is
    flat over all H*W coefficients; subtracting the mean zeroes exactly the DC one. Coefficient
    (ky, kx) sits at radius sqrt((ky/H)^2 + (kx/W)^2) in units of Nyquist.
    """
    ky, kx = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    return float((np.sqrt(ky ** 2 + kx ** 2) > cutoff).sum() / (h * w - 1))


def test_high_frequency_energy_smooth_gradient_is_zero():
    ramp = torch.linspace(0, 1, 64)
    img = torch.stack([(ramp[:, None] + ramp[None, :]) / 2, ramp[:, None].expand(64, 64),
                       1 - ramp[None, :].expand(64, 64)])[None]
    assert high_frequency_energy(img) < 1e-3
    assert high_frequency_energy(torch.full((2, 3, 16, 16), 0.3)) == 0.0  # no power at all


@pytest.mark.parametrize("cutoff", [0.25, 0.5])
def test_high_frequency_energy_white_noise(cutoff):
    x = torch.rand((16, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    expected = _white_noise_expected(64, 64, cutoff)
    assert high_frequency_energy(x, cutoff) == pytest.approx(expected, abs=0.005)
    # ... which is the continuum value 1 - pi c^2 / 4 up to the discretisation of the grid.
    assert expected == pytest.approx(1 - math.pi * cutoff ** 2 / 4, abs=0.01)


def test_artifact_ratio(photo_split):
    clean = photo_split[1][:64]
    assert artifact_ratio(clean, clean) == 1.0
    weak, strong = artifact_ratio(_noise(clean, 0.03), clean), artifact_ratio(_noise(clean, 0.05), clean)
    assert 1.15 < weak < strong  # ~8 levels of noise already shows; more noise, more energy
    assert artifact_ratio(_blur(clean), clean) < 0.8
    assert artifact_ratio(torch.full((1, 3, 8, 8), 0.5), torch.full((1, 3, 8, 8), 0.2)) == 1.0


def test_colour_noise(photo_split, faces):
    clean = photo_split[1][:64]
    assert colour_noise(faces[:16]) == 0.0  # grey: no chroma
    grey_rgb = faces[:16].expand(-1, 3, -1, -1)
    # Luminance noise (the same on all channels) is not colour noise.
    same = (grey_rgb + 0.05 * torch.randn(16, 1, 25, 25, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert colour_noise(same) == pytest.approx(0.0, abs=1e-12)
    assert colour_noise_ratio(clean, clean) == 1.0
    assert colour_noise_ratio(_noise(clean, 0.03), clean) > 2.0
    assert colour_noise(np.zeros((1, 3, 8, 8))) == 0.0


def test_colour_noise_ratio_on_a_grey_domain_counts_colour_speckle(faces):
    from udp_datasets.evaluate.metrics.artifacts import CHROMA_FLOOR
    from udp_datasets.evaluate.metrics.subject import artifact_score

    grey = faces[:16].expand(-1, 3, -1, -1).contiguous()
    speckled = _noise(grey, 0.03)  # independent noise per channel: colour speckle
    assert colour_noise_ratio(grey, grey) == 0.0  # no colour where the domain has none: finite, not inf
    assert colour_noise_ratio(speckled, grey) == pytest.approx(colour_noise(speckled) / CHROMA_FLOOR)
    assert colour_noise_ratio(speckled, grey) > 2.0
    # the few-shot artifact score sees the speckle on a grey domain (it dropped the colour term before 0.3.1)
    assert artifact_score(speckled, grey) > artifact_score(grey, grey) + 1.0


# --------------------------------------------------------------------------- pair fidelity

def test_psnr_known_offset():
    a = torch.rand((3, 3, 16, 16), generator=torch.Generator().manual_seed(0)) * 0.9
    b = a + 1 / 255
    # 48.1308 dB; torchmetrics' float32 10 / ln(10) costs up to ~2e-6 dB
    assert psnr(a, b) == pytest.approx(20 * math.log10(255), abs=1e-5)
    assert psnr(a, b) == pytest.approx(48.13, abs=0.005)
    per = psnr_per_image(a, b)
    assert per.shape == (3,) and np.allclose(per, 48.1308, atol=1e-3)
    assert psnr_per_image(a, a)[0] == math.inf


def test_psnr_matches_skimage(photo_split):
    a = photo_split[1][:4].double().numpy()
    b = np.clip(a + np.random.default_rng(0).normal(0, 0.02, a.shape), 0, 1)
    ref = [skmetrics.peak_signal_noise_ratio(x, y, data_range=1) for x, y in zip(a, b)]
    np.testing.assert_allclose(psnr_per_image(a, b), ref, atol=1e-5)  # torchmetrics takes log(10) in float32


def _sk_ssim(x: np.ndarray, y: np.ndarray) -> float:
    return skmetrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                           data_range=1, channel_axis=0)


def test_ssim_matches_skimage(photo_split, faces):
    rng = np.random.default_rng(0)
    cases = [photo_split[1][:6].double().numpy(),          # RGB 32x32
             faces[:4].double().numpy(),                    # grey 25x25
             rng.random((2, 3, 23, 40))]                    # non-square
    for a in cases:
        b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
        ref = np.array([_sk_ssim(x, y) for x, y in zip(a, b)])
        np.testing.assert_allclose(ssim_per_image(a, b), ref, atol=1e-3)
        np.testing.assert_allclose(ssim_per_image(torch.from_numpy(a).float(), b), ref, atol=1e-3)
        assert ssim(a, b) == pytest.approx(ref.mean(), abs=1e-3)
    assert ssim(cases[0], cases[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        ssim(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8)))  # smaller than the 11x11 window


def _psnr_before_torchmetrics(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """The hand-written PSNR the reports used before torchmetrics (float64, 10 log10(1 / MSE))."""
    mse = (a - b).square().flatten(1).mean(dim=1).numpy()
    return 10.0 * np.log10(1.0 / mse)


def _ssim_before_torchmetrics(a: torch.Tensor, b: torch.Tensor, sigma: float = 1.5) -> np.ndarray:
    """The hand-written SSIM the reports used before torchmetrics: separable Gaussian (truncate 3.5)
    with scipy 'reflect' borders, population covariances, the window radius cropped."""
    r = int(3.5 * sigma + 0.5)
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64) / sigma) ** 2)
    g = g / g.sum()
    n, c, h, w = a.shape

    def reflect(m: int) -> torch.Tensor:
        idx = torch.arange(-r, m + r) % (2 * m)
        return torch.where(idx >= m, 2 * m - 1 - idx, idx)

    def blur(x: torch.Tensor) -> torch.Tensor:
        x = x.index_select(-2, reflect(h)).index_select(-1, reflect(w))
        return F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1))

    x, y = a.reshape(-1, 1, h, w), b.reshape(-1, 1, h, w)
    ux, uy, uxx, uyy, uxy = blur(torch.cat([x, y, x * x, y * y, x * y])).chunk(5)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vx, vy, vxy = uxx - ux * ux, uyy - uy * uy, uxy - ux * uy
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s[..., r:h - r, r:w - r].reshape(n, c, -1).mean(dim=2).mean(dim=1).numpy()


def test_torchmetrics_psnr_and_ssim_agree_with_the_earlier_hand_written_ones(photo_split, faces):
    """PSNR / SSIM now come from torchmetrics; the committed reports' numbers must not move."""
    rng = np.random.default_rng(1)
    photos = [torch.from_numpy(p[:128, :128, :3].copy()).permute(2, 0, 1)[None].double() / 255
              for p in (skdata.astronaut(), skdata.coffee(), skdata.chelsea())]
    cases = [*photos, photo_split[1][:8].double(), faces[:6].double(), torch.rand(3, 3, 16, 16, dtype=torch.float64)]
    for a in cases:
        for budget in (2 / 255, 8 / 255, 0.05):
            b = (a + torch.from_numpy(rng.uniform(-budget, budget, tuple(a.shape)))).clamp(0, 1)
            np.testing.assert_allclose(psnr_per_image(a, b), _psnr_before_torchmetrics(a, b), rtol=0, atol=1e-5)
            np.testing.assert_allclose(ssim_per_image(a, b), _ssim_before_torchmetrics(a, b), rtol=0, atol=1e-8)


def test_linf_levels():
    a = np.full((2, 3, 8, 8), 100 / 255)
    b = a.copy()
    b[1, 2, 3, 4] += 8 / 255
    b[0, 0, 0, 0] -= 5 / 255
    assert linf_levels(a, b) == 8
    assert linf_levels(a, a) == 0
    assert linf_levels((a * 255).round().astype(np.uint8), (b * 255).round().astype(np.uint8)) == 8


def test_image_inputs_are_validated_and_converted():
    x = np.random.default_rng(0).random((2, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        high_frequency_energy(x * 2 - 1)
    with pytest.raises(ValueError):
        psnr(x, x[:1])
    with pytest.raises(ValueError):
        colour_noise(np.zeros((16, 16)))
    assert high_frequency_energy(x) == pytest.approx(high_frequency_energy(torch.from_numpy(x).float()), abs=1e-6)
    hwc = [(x[i].transpose(1, 2, 0) * 255).round().astype(np.uint8) for i in range(2)]
    nchw = hwc_to_nchw(hwc)
    assert nchw.shape == (2, 3, 16, 16) and nchw.dtype == torch.float32
    assert linf_levels(nchw, x) == 0


# --------------------------------------------------------------------------- fitted extractor

def test_fitted_extractor_is_deterministic(faces):
    a = FittedFeatureExtractor().fit(faces[:120], seed=7)
    b = FittedFeatureExtractor().fit(faces[:120], seed=7)
    c = FittedFeatureExtractor().fit(faces[:120], seed=8)
    fa, fb, fc = a(faces[120:]), b(faces[120:]), c(faces[120:])
    assert fa.shape == (80, a.out_dim) and fa.dtype == np.float64 and np.isfinite(fa).all()
    np.testing.assert_array_equal(fa, fb)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert not np.allclose(fa, fc)
    # Whitened on the clean training set: zero mean, unit variance per output feature.
    train = a(faces[:120])
    assert np.abs(train.mean(axis=0)).max() < 1e-6
    np.testing.assert_allclose(np.diag(np.cov(train, rowvar=False)), 1.0, atol=1e-6)


def test_fitted_extractor_save_load_round_trip(tmp_path, faces):
    ext = get_feature_extractor("fitted", images=faces[:120], seed=3)
    path = ext.save(tmp_path / "sub" / "features.safetensors")
    loaded = get_feature_extractor("fitted", path=path)
    assert isinstance(loaded, FittedFeatureExtractor)
    assert (loaded.size, loaded.seed, loaded.n_fit, loaded.fingerprint) == (ext.size, 3, 120, ext.fingerprint)
    np.testing.assert_array_equal(loaded(faces[120:]), ext(faces[120:]))
    (tmp_path / "bogus.safetensors").write_bytes(b"not a file")
    with pytest.raises(Exception):
        FittedFeatureExtractor.load(tmp_path / "bogus.safetensors")
    with pytest.raises(FileNotFoundError):
        FittedFeatureExtractor.load(tmp_path / "missing.safetensors")


def test_fitted_extractor_any_resolution_and_grey(photo_extractor, photo_split, faces):
    assert photo_extractor.size == 32  # picked from the clean training images
    clean = photo_split[1][:20]
    big = F.interpolate(clean, size=(48, 48), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    for batch in (big, faces[:20], clean.numpy(), [clean[:5], faces[:3], big[0]]):
        f = photo_extractor(batch)
        assert f.ndim == 2 and f.shape[1] == photo_extractor.out_dim and np.isfinite(f).all()
    # Upsampled copies of the same images land close to the originals in feature space.
    assert np.abs(photo_extractor(big) - photo_extractor(clean)).mean() < 0.5
    with pytest.raises(RuntimeError, match="not fitted"):
        FittedFeatureExtractor()(clean)


def test_fitted_fd_is_larger_for_degraded_sets_than_for_a_fresh_sample(photo_extractor, photo_split):
    _, held_a, held_b = photo_split
    ref = photo_extractor(held_a)
    fresh = frechet_distance_from_features(ref, photo_extractor(held_b))
    cast = (held_b + torch.tensor([0.08, 0.0, -0.08]).view(1, 3, 1, 1)).clamp(0, 1)
    degraded = {
        "blur": _blur(held_b),
        "noise": _noise(held_b, 0.05),
        "colour cast": cast,
        "translation": torch.roll(held_b, shifts=(4, 4), dims=(2, 3)),
    }
    for name, images in degraded.items():
        fd = frechet_distance_from_features(ref, photo_extractor(images))
        assert fd > 1.5 * fresh, f"{name}: FD {fd:.3f} vs fresh sample {fresh:.3f}"
    # Precision / recall on the same features: a fresh sample is on the manifold, noise is not.
    p_fresh, r_fresh = precision_recall(ref, photo_extractor(held_b))
    p_noise, r_noise = precision_recall(ref, photo_extractor(degraded["noise"]))
    assert p_fresh > 0.85 and r_fresh > 0.85
    assert p_noise < p_fresh - 0.1 and r_noise < r_fresh - 0.1


def test_fitted_fd_on_grey_faces(faces):
    ext = FittedFeatureExtractor().fit(faces[:100], seed=0)
    ref = ext(faces[100:150])
    fresh = frechet_distance_from_features(ref, ext(faces[150:]))
    assert frechet_distance_from_features(ref, ext(_blur(faces[150:], times=2))) > 1.5 * fresh


# --------------------------------------------------------------------------- Inception (optional)

@pytest.fixture()
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)

    def no_download(*args, **kwargs):  # any attempt to download fails the test loudly
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def test_inception_unavailable_without_weights(empty_torch_home):
    with pytest.raises(FeatureExtractorUnavailable) as info:
        get_feature_extractor("inception")
    message = str(info.value)
    assert "--inception-weights" in message and str(empty_torch_home) in message
    assert INCEPTION_TORCHSCRIPT_FILE in message and INCEPTION_FIDELITY_FILE in message
    with pytest.raises(FeatureExtractorUnavailable, match="no weights file"):
        InceptionFeatureExtractor(weights_path=empty_torch_home / "nope.pth")


def test_inception_state_dict_needs_torch_fidelity(empty_torch_home, monkeypatch, tmp_path):
    weights = tmp_path / INCEPTION_FIDELITY_FILE
    torch.save({"fc.weight": torch.zeros(1)}, weights)
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # as if not installed
    with pytest.raises(FeatureExtractorUnavailable, match="torch-fidelity"):
        InceptionFeatureExtractor(weights_path=weights)


def test_inception_torch_fidelity_gets_the_explicit_path(empty_torch_home, monkeypatch):
    empty_torch_home.mkdir(parents=True)
    cached = empty_torch_home / INCEPTION_FIDELITY_FILE
    torch.save({}, cached)
    seen = {}

    class FakeInception(torch.nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__()
            seen["path"] = feature_extractor_weights_path

        def forward(self, x):
            assert x.dtype == torch.uint8
            return (x.float().mean(dim=(2, 3)).repeat(1, 4),)

    module = types.ModuleType("torch_fidelity.feature_extractor_inceptionv3")
    module.FeatureExtractorInceptionV3 = FakeInception
    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", module)
    ext = get_feature_extractor("inception")
    assert seen["path"] == str(cached) and ext.backend == "torch-fidelity"
    assert ext(torch.ones(2, 1, 8, 8)).shape == (2, 12)


class _FakeTorchScriptInception(torch.nn.Module):
    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.mean(dim=(2, 3)).repeat(1, 2) if return_features else img.sum()


def test_inception_torchscript_backend(empty_torch_home):
    empty_torch_home.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(_FakeTorchScriptInception())
        torch.jit.save(scripted, str(empty_torch_home / INCEPTION_TORCHSCRIPT_FILE))
    ext = get_feature_extractor("inception")
    assert ext.backend == "torchscript"
    f = ext(np.full((3, 1, 10, 10), 0.5))  # grey, [0, 1] -> RGB 8-bit levels
    np.testing.assert_allclose(f, np.full((3, 6), 128.0))


def test_unknown_extractor_name():
    with pytest.raises(ValueError, match="fitted"):
        get_feature_extractor("clip")
