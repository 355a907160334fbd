"""Expectation over transformations: each transform is differentiable, shape- and range-preserving,
the JPEG approximation tracks libjpeg, draws are per-sample and reproducible, and EOT runs in PGD."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from udp_datasets import ConfigError, ProtectionConfig, Protector
from udp_datasets.method.eot import TRANSFORMS, apply_eot, down_up, gaussian_blur, jpeg_approximation
from udp_datasets.sources.bundled import photo


def _gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 1, 37, 29), (1, 3, 9, 8)])
@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_every_transform_is_differentiable_and_keeps_shape_and_range(name, shape):
    x = torch.rand(shape, requires_grad=True)
    y = apply_eot(x, [name], _gens(shape[0]))
    assert y.shape == x.shape and float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_jpeg_approximation_tracks_libjpeg(quality):
    arr = np.array(Image.fromarray(photo("astronaut")).resize((96, 96)))
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality, subsampling=0)
    libjpeg = torch.from_numpy(np.array(Image.open(buf))).permute(2, 0, 1)[None].float() / 255
    approx = jpeg_approximation(torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255, quality)
    psnr = 10 * torch.log10(1 / (approx - libjpeg).pow(2).mean())
    assert psnr > 38, f"the approximation is {psnr:.1f} dB from libjpeg at quality {quality}"


def test_blur_and_resize_remove_detail_but_keep_a_flat_image_flat():
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat, atol=1e-6)
    assert torch.allclose(down_up(flat, 0.5), flat, atol=1e-6)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None, :]).remainder(2).float().expand(1, 3, 16, 16)
    assert gaussian_blur(checker, 1.0).std() < 0.2 * checker.std()


def test_draws_are_per_sample_and_reproducible():
    x = torch.rand(4, 3, 16, 16)
    a = apply_eot(x, ["blur", "resize", "jpeg", "noise"], _gens(4))
    b = apply_eot(x, ["blur", "resize", "jpeg", "noise"], _gens(4))
    assert torch.equal(a, b)
    alone = apply_eot(x[2:3], ["blur", "resize", "jpeg", "noise"], _gens(1, seed=2))
    assert torch.equal(alone, a[2:3])  # a sample's transform does not depend on its batch


def test_config_field_validation_and_stable_hash():
    assert ProtectionConfig(eot="blur, jpeg").eot_transforms == ("blur", "jpeg")
    with pytest.raises(ConfigError, match="sharpen"):
        ProtectionConfig(eot="blur,sharpen")
    # a field added later leaves the hash of a config that does not use it unchanged
    assert ProtectionConfig().hash() == "e90b35be8d9380b8"
    assert ProtectionConfig(eot="jpeg").hash() != ProtectionConfig().hash()


def test_protection_with_eot_stays_within_budget_and_differs(tiny_config, photos32, one_torch_thread):
    plain = Protector(tiny_config, progress=False).protect_images(photos32[:3])
    eot = Protector(tiny_config.replace(eot="blur,resize,jpeg,noise"), progress=False).protect_images(photos32[:3])
    assert all(0 < r.linf <= tiny_config.budget_levels for r in eot)
    assert [r.sha256 for r in plain] != [r.sha256 for r in eot]
