import dataclasses
import json

import pytest

from udp_datasets import ConfigError, ProtectionConfig, parse_epsilon


def test_json_round_trip_and_hash_stable():
    cfg = ProtectionConfig(epsilon=4 / 255, steps=7, objective="adversarial", timesteps="range",
                           t_min=10, t_max=200, random_start=True, surrogate="some/model")
    again = ProtectionConfig.from_json(cfg.to_json())
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert json.loads(cfg.to_json())["objective"] == "adversarial"


def test_hash_tracks_recipe_not_runtime():
    cfg = ProtectionConfig()
    assert cfg.replace(device="cuda:3", batch_size=128).hash() == cfg.hash()
    assert cfg.replace(steps=cfg.steps + 1).hash() != cfg.hash()
    assert cfg.replace(timesteps="uniform").hash() != cfg.hash()


@pytest.mark.parametrize("text,expected", [("8/255", 8 / 255), ("0.5", 0.5), ("8", 8 / 255), (16, 16 / 255),
                                           (0.03, 0.03)])
def test_parse_epsilon(text, expected):
    assert parse_epsilon(text) == pytest.approx(expected)


@pytest.mark.parametrize("changes,match", [
    ({"epsilon": 0.0}, "outside"),
    ({"epsilon": 1.5}, "outside"),
    ({"epsilon": float("nan")}, "finite"),
    ({"epsilon": 0.001}, "grey levels"),
    ({"steps": 0}, "steps"),
    ({"objective": "maximize"}, "objective"),
    ({"timesteps": "cosine"}, "timesteps"),
    ({"t_min": 50, "t_max": 10}, "below"),
    ({"t_max": 5000}, "num_train_timesteps"),
    ({"alpha": -1.0}, "alpha"),
    ({"gamma": -1.0}, "gamma"),
    ({"resolution": 30}, "multiple of 4"),
    ({"batch_size": True}, "batch_size"),
])
def test_validation_errors_name_the_field(changes, match):
    with pytest.raises(ConfigError, match=match):
        ProtectionConfig(**changes)


def test_unknown_field_and_yaml_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown config field"):
        ProtectionConfig.from_dict({"epsilonn": 0.1})
    path = tmp_path / "c.yaml"
    path.write_text("epsilon: 16/255\nobjective: adversarial\nsteps: 3\n")
    cfg = ProtectionConfig.from_file(path)
    assert cfg.budget_levels == 16 and cfg.objective == "adversarial" and cfg.steps == 3
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="mapping"):
        ProtectionConfig.from_file(bad)


def test_budget_levels_and_default_step():
    cfg = ProtectionConfig(epsilon=8 / 255)
    assert cfg.budget_levels == 8
    assert cfg.step_size == pytest.approx(1 / 255)


# ------------------------------------------------------------ config_version (issue 18)
def test_a_version_1_config_keeps_the_hash_it_had_before_config_version_existed():
    from udp_datasets.config import DEFAULTS_VERSION

    assert ProtectionConfig().config_version == DEFAULTS_VERSION == 2
    # pinned: ProtectionConfig().hash() of 0.2 (before config_version and encoder_reduction were added)
    assert ProtectionConfig(config_version=1).hash() == ProtectionConfig().hash() == "e90b35be8d9380b8"
    old = {k: v for k, v in ProtectionConfig(steps=7).to_dict().items()
           if k not in ("config_version", "encoder_reduction")}  # a record written by 0.2
    assert ProtectionConfig.from_dict(old).config_version == 1
    assert ProtectionConfig.from_dict(old).hash() == ProtectionConfig(steps=7, config_version=1).hash()
    with pytest.raises(ConfigError, match="config_version"):
        ProtectionConfig(config_version=3)


def test_a_config_file_without_config_version_reads_as_version_1(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\n")
    assert ProtectionConfig.from_file(path).config_version == 1
    path.write_text("steps: 5\nconfig_version: 2\n")
    assert ProtectionConfig.from_file(path).config_version == 2


def test_version_2_defaults_apply_on_latent_surrogates_only_where_the_user_chose_nothing():
    from udp_datasets.config import LATENT_DEFAULTS_V2, apply_version_defaults

    assert set(LATENT_DEFAULTS_V2) <= {f.name for f in dataclasses.fields(ProtectionConfig)}
    new = ProtectionConfig(surrogate="pair")
    latent = apply_version_defaults(new, latent=True)
    assert all(getattr(latent, k) == v for k, v in LATENT_DEFAULTS_V2.items())
    assert apply_version_defaults(latent, latent=True) == latent  # applied twice: the same
    assert apply_version_defaults(new, latent=False) == new  # pixel surrogates keep 0.2's defaults
    assert apply_version_defaults(new.replace(config_version=1), latent=True) == new.replace(config_version=1)
    assert apply_version_defaults(new.replace(preset="advdm"), latent=True) == new.replace(preset="advdm")
    others = [k for k in LATENT_DEFAULTS_V2 if k != "objective"]
    if others:  # a field the user set keeps its value; the others still take version 2's
        kept = apply_version_defaults(new, latent=True, explicit={others[0]})
        assert getattr(kept, others[0]) == getattr(new, others[0])
    # naming the objective chooses the method: nothing of version 2's is mixed into it
    mine = new.replace(objective="adversarial")
    assert apply_version_defaults(mine, latent=True) == mine
    assert apply_version_defaults(new, latent=True, explicit={"objective"}) == new


def test_cli_fills_version_2_defaults_on_a_latent_surrogate(tmp_path):
    import argparse

    from udp_datasets.cli.config_flags import add_config_arguments, protect_config_from_args
    from udp_datasets.config import LATENT_DEFAULTS_V2
    from udp_datasets.evaluate.tiny_models import save_tiny_latent_pair

    pair = str(save_tiny_latent_pair(tmp_path / "pair", image_size=32, seed=2))
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    read = lambda *flags: protect_config_from_args(parser.parse_args(["--surrogate", pair, *flags]))  # noqa: E731
    assert all(getattr(read(), k) == v for k, v in LATENT_DEFAULTS_V2.items())
    assert read("--config-version", "1") == ProtectionConfig(surrogate=pair, config_version=1)
    assert read("--objective", "adversarial") == ProtectionConfig(surrogate=pair, objective="adversarial")
    assert read("--preset", "advdm").random_start is False
    old_file = tmp_path / "old.json"  # a 0.2 config file: no config_version
    old_file.write_text(json.dumps({"steps": 5}))
    assert read("--config-file", str(old_file)) == ProtectionConfig(surrogate=pair, steps=5, config_version=1)


def test_default_config_is_what_protect_runs_with_no_flags(tmp_path):
    """``default_config()`` in Python equals the config ``udp-datasets protect SRC DST`` resolves with no
    flags (the shipped pair, version 2's method); fields set over it win, and another surrogate is refused."""
    import argparse

    from udp_datasets import default_config
    from udp_datasets.cli.config_flags import add_config_arguments, protect_config_from_args
    from udp_datasets.config import LATENT_DEFAULTS_V2, SHIPPED_SURROGATE

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert default_config() == protect_config_from_args(parser.parse_args([]))
    assert default_config().surrogate == SHIPPED_SURROGATE and default_config() != ProtectionConfig()
    assert all(getattr(default_config(), k) == v for k, v in LATENT_DEFAULTS_V2.items())
    assert default_config(steps=5) == protect_config_from_args(parser.parse_args(["--steps", "5"]))
    mine = default_config(objective="adversarial")  # naming the objective chooses the method
    assert mine == ProtectionConfig(surrogate=SHIPPED_SURROGATE, objective="adversarial")
    for field in LATENT_DEFAULTS_V2:
        if field != "objective":  # a version-2 field you set keeps your value
            value = getattr(ProtectionConfig(), field)
            assert getattr(default_config(**{field: value}), field) == value
    with pytest.raises(ConfigError, match="apply_version_defaults"):
        default_config(surrogate="my/pair")
