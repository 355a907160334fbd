"""The generator engine (issue 19): delta = epsilon * tanh(G(x)) in one forward pass, through the same rounding,
budget proof and provenance as PGD. Correctness only (no timing): every output pixel within the budget over sizes
and modes, deterministic output for a seed and an input, the engine in the config hash. Training, the shipped
weights and verify / publish of generator jobs: tests/method/test_generator_training.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_properties import UNCHANGED, images
from udp_datasets import ProtectionConfig, Protector
from udp_datasets.images import load_image
from udp_datasets.method.generator import PerturbationGenerator, generator_delta, read_generator, save_generator
from udp_datasets.models import weights_sha256
from udp_datasets.images import FailedImage, ProtectedImage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def loud_generator(tmp_path_factory) -> str:
    """A seeded, untrained generator whose output layer is scaled up, so that tanh saturates: most pixels move
    by the whole budget (an untrained G's output would often round to the clean image)."""
    net = PerturbationGenerator(width=8, seed=11)
    with torch.no_grad():
        net.out.weight.mul_(200.0)
    folder = tmp_path_factory.mktemp("generators") / "loud"
    save_generator(net, folder)
    return str(folder)


# ------------------------------------------------------------------ the network
def test_generator_is_deterministic_for_a_seed_and_works_at_any_size():
    a, b, c = (PerturbationGenerator(seed=s).requires_grad_(False) for s in (7, 7, 8))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.out.weight, c.out.weight)
    for h, w in ((1, 1), (5, 3), (17, 64), (33, 31)):
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
        d1, d2 = generator_delta(a, x, 4 / 255), generator_delta(b, x, 4 / 255)
        assert d1.shape == x.shape and torch.equal(d1, d2)
        assert float(d1.abs().max()) <= 4 / 255 + 1e-7 and float((x + d1).min()) >= 0 and float((x + d1).max()) <= 1
        # one image alone gives the same perturbation as in a batch (no layer mixes samples)
        assert torch.allclose(generator_delta(a, x[1:], 4 / 255), d1[1:], atol=1e-7)
    grey = generator_delta(a, torch.rand(1, 1, 9, 9), 8 / 255)
    assert grey.shape == (1, 1, 9, 9)


def test_weights_round_trip_through_safetensors(tmp_path):
    net = PerturbationGenerator(width=6, seed=3)
    sha = save_generator(net, tmp_path / "g")
    back, sha_back = read_generator(str(tmp_path / "g"))
    assert sha == sha_back == weights_sha256(tmp_path / "g")
    x = torch.rand(1, 3, 12, 10)
    assert torch.equal(generator_delta(net.eval(), x, 0.03), generator_delta(back, x, 0.03))
    assert not list((tmp_path / "g").glob("*.pt")) and not list((tmp_path / "g").glob("*.bin"))


# ------------------------------------------------------------------ the engine in the config and the protector
def test_engine_is_in_the_hash_unless_pgd():
    base = ProtectionConfig()
    assert base.engine == "pgd" and base.hash() == ProtectionConfig(engine="pgd").hash()
    # the generator's own fields change nothing while the engine is PGD
    assert base.hash() == base.replace(generator="/some/folder", generator_pgd_steps=9).hash()
    hashes = {base.hash(), base.replace(engine="generator").hash(), base.replace(engine="generator+pgd").hash(),
              base.replace(engine="generator+pgd", generator_pgd_steps=3).hash(),
              base.replace(engine="generator", generator="/other").hash()}
    assert len(hashes) == 5
    assert ProtectionConfig.from_json(base.replace(engine="generator+pgd").to_json()).engine == "generator+pgd"
    from udp_datasets.config import ConfigError

    with pytest.raises(ConfigError, match="engine"):
        ProtectionConfig(engine="gan")
    with pytest.raises(ConfigError, match="generator_pgd_steps"):
        ProtectionConfig(generator_pgd_steps=0)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(images(), min_size=1, max_size=4), levels=st.integers(1, 16),
       engine=st.sampled_from(["generator", "generator+pgd"]), batch_size=st.integers(1, 3))
def test_generator_output_is_within_the_budget_on_every_pixel(tiny_config, loud_generator, batch, levels, engine,
                                                              batch_size):
    config = tiny_config.replace(engine=engine, generator=loud_generator, generator_pgd_steps=1, epsilon=levels / 255,
                                 batch_size=batch_size)
    keys = [f"k{i}" for i in range(len(batch))]
    first = Protector(config, progress=False).protect_images(batch, keys=keys)
    again = Protector(config, progress=False).protect_images(batch, keys=keys)
    for data, result, repeat in zip(batch, first, again):
        clean = load_image(data)
        if isinstance(result, FailedImage):  # only an image that rounds to itself (e.g. all white)
            assert UNCHANGED in result.reason and isinstance(repeat, FailedImage)
            continue
        assert isinstance(result, ProtectedImage)
        out = load_image(result.png)
        diff = np.abs(out.pixels.astype(int) - clean.pixels.astype(int))
        assert out.pixels.shape == clean.pixels.shape and diff.max() <= levels and result.linf == diff.max() >= 1
        if clean.alpha is not None:
            assert np.array_equal(out.alpha, clean.alpha)
        assert isinstance(repeat, ProtectedImage) and repeat.png == result.png  # deterministic




def test_engines_share_the_protector_path_and_differ(tiny_config, loud_generator, photos32):
    outs = {}
    for engine in ("pgd", "generator", "generator+pgd"):
        config = tiny_config.replace(engine=engine, generator=loud_generator, steps=2, generator_pgd_steps=2)
        outs[engine] = Protector(config, progress=False).protect_images(photos32[:3], keys=["a", "b", "c"])
        assert all(isinstance(r, ProtectedImage) and r.linf >= 1 for r in outs[engine])
    assert [r.png for r in outs["generator"]] != [r.png for r in outs["pgd"]]
    assert [r.png for r in outs["generator+pgd"]] != [r.png for r in outs["generator"]]
    # a mixed batch (several sizes) gives each image what it gets alone
    config = tiny_config.replace(engine="generator", generator=loud_generator, batch_size=4)
    mixed = [photos32[0], photos32[1][:20, :27], photos32[2][:9]]
    together = Protector(config, progress=False).protect_images(mixed, keys=["a", "b", "c"])
    alone = [Protector(config, progress=False).protect_images([m], keys=[k])[0] for m, k in zip(mixed, "abc")]
    assert [r.png for r in together] == [r.png for r in alone]
