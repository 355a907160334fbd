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
