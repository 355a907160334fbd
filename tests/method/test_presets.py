"""Every named method runs through the one PGD core, stays within the budget and moves its own
loss in the direction it claims (measured with common random numbers on clean vs protected)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from udp_datasets import ConfigError, ProtectionConfig, Protector
from udp_datasets.evaluate.tiny_models import save_tiny_latent_pair
from udp_datasets.images import decode_png_pixels
from udp_datasets.method.objectives import ProtectionObjective
from udp_datasets.method.pgd import sample_generator
from udp_datasets.method.presets import LATENT_ONLY, PRESETS, preset_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FIT = dict(fit_rounds=2, fit_surrogate_steps=4, fit_pgd_steps=2, fit_batch_size=8)


@pytest.fixture(scope="module")
def latent_pair(tmp_path_factory) -> str:
    return str(save_tiny_latent_pair(tmp_path_factory.mktemp("pair") / "pair", image_size=32, seed=2))


def _as_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_moves_its_loss_in_its_direction_within_budget(name, latent_pair, photos32, tmp_path):
    config = preset_config(name, surrogate=latent_pair, steps=20, alpha=2 / 255, seed=3, **FIT)
    protector = Protector(config, progress=False)
    images = photos32[:4]
    if name in ("aspl", "metacloak", "udp", "eudp"):  # the methods whose surrogate is trained in fit
        protector.fit(images, output_dir=tmp_path / "fitted")
    results = protector.protect_images(images)
    assert all(0 < r.linf <= config.budget_levels for r in results), name
    assert protector.config.preset == name
    surrogate = protector.prepare_surrogate()
    # measured at small t, where an 8/255 change is visible to the denoiser (at large t the loss is
    # mostly the sampled noise), with the same draws for clean and protected images
    objective = ProtectionObjective(surrogate, protector.config.replace(eot="", timesteps="range", t_max=200))
    clean = _as_tensor(images)
    protected = _as_tensor([decode_png_pixels(r.png) for r in results])

    def loss(x: torch.Tensor) -> float:
        gens = [sample_generator(99, str(i)) for i in range(len(images))]
        return float(objective.evaluate(x, gens, repeats=32, clean=clean).mean())

    before, after = loss(clean), loss(protected)
    assert (after > before) if objective.maximize else (after < before), (name, before, after)


def test_presets_set_only_their_fields_and_record_the_name():
    base = ProtectionConfig(epsilon=4 / 255, steps=17)
    config = preset_config("metacloak", base=base)
    assert (config.epsilon, config.steps, config.fit_pool, config.eot, config.preset) == \
        (4 / 255, 17, 3, "blur,resize,jpeg,noise", "metacloak")
    assert preset_config("eudp").replace(preset=None) == ProtectionConfig(objective="unlearnable", timesteps="eudp")
    with pytest.raises(ConfigError, match="not one of"):
        preset_config("glaze")
    with pytest.raises(ConfigError, match="preset"):
        ProtectionConfig(preset="nightshade")


def test_mist_is_weighted_as_its_released_code_and_mist_w1_keeps_the_old_weighting():
    """Mist's mist_v3.py minimises MSELoss(sum)(zx, zy) - 1e4 * semantic: our loss is that over -1e4."""
    mist, old = preset_config("mist"), preset_config("mist_w1")
    assert (mist.encoder_weight, mist.encoder_reduction, mist.encoder_target) == (1e-4, "sum", "pattern")
    assert (old.encoder_weight, old.encoder_reduction, old.encoder_target) == (1.0, "mean", "pattern")
    assert {"mist", "mist_w1"} <= LATENT_ONLY
    # the old weighting's config hash did not change with the new field (left out at its default)
    assert old.replace(preset="mist").hash() == ProtectionConfig(
        objective="adversarial", timesteps="uniform", encoder_weight=1.0, encoder_target="pattern",
        preset="mist").hash()


def test_mist_sum_reduction_weights_the_textural_term_by_the_latent_size(latent_pair, photos32):
    """encoder_reduction='sum' scales the textural term by the number of latent elements."""
    from udp_datasets import load_surrogate

    surrogate = load_surrogate(latent_pair).freeze()
    x = _as_tensor(photos32[:2])
    base = dict(objective="encoder", encoder_target="pattern")
    losses = {}
    for reduction in ("mean", "sum"):
        objective = ProtectionObjective(surrogate, ProtectionConfig(**base, encoder_reduction=reduction))
        gens = [sample_generator(0, str(i)) for i in range(2)]
        losses[reduction] = objective.evaluate(x, gens, repeats=1)
    elements = int(np.prod(surrogate.model_shape))
    torch.testing.assert_close(losses["sum"], losses["mean"] * elements, rtol=1e-4, atol=1e-6)


def test_encoder_presets_refuse_a_pixel_surrogate(unlearnable_surrogate):
    from udp_datasets import SurrogateError

    for name in sorted(LATENT_ONLY):
        with pytest.raises(SurrogateError, match="latent"):
            Protector(preset_config(name, surrogate=unlearnable_surrogate), progress=False).protect_images(
                [np.zeros((32, 32, 3), np.uint8) + 100])


def test_cli_preset_flag_applies_the_method_and_other_flags_win(tmp_path):
    import argparse

    from udp_datasets.cli.config_flags import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args(["--preset", "mist", "--steps", "9", "--encoder-target", "away"]))
    assert (config.preset, config.objective, config.encoder_weight, config.steps, config.encoder_target) == \
        ("mist", "adversarial", 1e-4, 9, "away")
    saved = tmp_path / "c.json"
    saved.write_text(ProtectionConfig(preset="udp", objective="unlearnable", steps=5).to_json())
    from_file = config_from_args(parser.parse_args(["--config-file", str(saved)]))
    assert (from_file.preset, from_file.steps) == ("udp", 5)  # a file's preset is a record, not re-applied
    with pytest.raises(ConfigError, match="not one of"):
        config_from_args(parser.parse_args(["--preset", "glaze"]))


def test_mist2_ace_loss_is_the_distance_of_the_denoiser_output_to_the_target_latent(latent_pair, photos32):
    """objective='ace' (Mist v2): mean over latent elements of (eps_theta(z_t, t) - E(target))^2, descended,
    and at Mist v2's own budget (8/255 on [-1, 1] = 4/255 here) PGD lowers it."""
    from udp_datasets import load_surrogate

    surrogate = load_surrogate(latent_pair).freeze()
    config = preset_config("mist2", surrogate=latent_pair, epsilon=4 / 255, steps=20, alpha=1 / 255)
    objective = ProtectionObjective(surrogate, config)
    assert not objective.maximize and objective.ace and "mist2" in LATENT_ONLY
    x = _as_tensor(photos32[:2])
    t, w, noise = objective.draw([sample_generator(5, str(i)) for i in range(2)])
    got = objective.loss(x, t, w, noise)
    z = surrogate.encode(x)
    abar = surrogate.alphas_cumprod[t].view(-1, 1, 1, 1)
    pred = surrogate.predict(abar.sqrt() * z + (1 - abar).sqrt() * noise, t)
    want = (pred - objective.target_latent()).pow(2).flatten(1).mean(1) * w
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    results = Protector(config, progress=False).protect_images(photos32[:2])
    assert all(0 < r.linf <= 4 for r in results)
    protected = _as_tensor([decode_png_pixels(r.png) for r in results])
    gens = lambda: [sample_generator(99, str(i)) for i in range(2)]  # noqa: E731
    assert float(objective.evaluate(protected, gens(), repeats=16).mean()) < \
        float(objective.evaluate(x, gens(), repeats=16).mean())
