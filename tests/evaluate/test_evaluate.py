"""Evaluation end to end on tiny data; no test claims that protection works (docs/efficacy.md does)."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from udp_datasets.cli.app import EXIT_OK, EXIT_USAGE, main
from udp_datasets.evaluate.data import split_holdout
from udp_datasets.evaluate.experiments.evaluate_command import evaluate_pair
from udp_datasets.evaluate.experiments.victim_runs import EvalSettings
from udp_datasets.evaluate.metrics.fidelity import perturbation_cost
from udp_datasets.evaluate.purify.filters import ATTACKS
from udp_datasets.evaluate.report import relative_to_folder, results_table, verdict
from udp_datasets.evaluate.victims.pixel import VictimConfig, sample_victim, train_victim

TINY_VICTIM = VictimConfig(resolution=16, train_steps=12, batch_size=8, warmup_steps=2, sample_steps=5)


def test_attacks_are_deterministic_and_change_pixels(photos32):
    img = photos32[0]
    for name, attack in ATTACKS.items():
        a, b = attack(img), attack(img)
        assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)
        assert not np.array_equal(a, img), name
    grey = photos32[1][:, :, :1]
    assert ATTACKS["jpeg75"](grey).shape == grey.shape


def test_victim_trains_saves_and_samples_deterministically(photos32, tmp_path):
    result = train_victim(photos32[:8], TINY_VICTIM, tmp_path / "v", progress=False)
    assert len(result.loss_history) == 12 and np.isfinite(result.final_loss())
    from diffusers import DDPMPipeline

    DDPMPipeline.from_pretrained(tmp_path / "v")  # a standard diffusers pipeline folder
    a = sample_victim(tmp_path / "v", 3, seed=1, steps=4, progress=False)
    b = sample_victim(tmp_path / "v", 3, seed=1, steps=4, progress=False)
    assert a.shape == (3, 16, 16, 3) and a.dtype == np.uint8 and np.array_equal(a, b)


def test_perturbation_cost_and_holdout_split(photos32):
    noisy = [np.clip(a.astype(int) + 2, 0, 255).astype(np.uint8) for a in photos32[:4]]
    cost = perturbation_cost(photos32[:4], noisy)
    assert cost["linf_levels"] == 2 and 40 < cost["psnr_db"] < 50 and cost["ssim"] > 0.95
    train, hold = split_holdout(20, 0.25, seed=0)
    assert len(hold) == 5 and len(train) == 15 and not set(train) & set(hold)
    with pytest.raises(ValueError, match="differ in size"):
        perturbation_cost(photos32[:4], noisy[:3])


def linked_files(files) -> list[str]:
    """Every path in a report's ``files`` block (nested dicts, None left out)."""
    if isinstance(files, dict):
        return [p for v in files.values() for p in linked_files(v)]
    return [] if files is None else [files]


def assert_report_moves_with_its_links(folder: Path, moved: Path) -> None:
    """report.json names its files relative to its folder, so a moved (copied, published) report still
    finds every one of them, and it records no path of the machine that wrote it."""
    shutil.move(str(folder), str(moved))
    saved = json.loads((moved / "report.json").read_text())
    links = linked_files(saved["files"])
    assert links and str(folder) not in (moved / "report.json").read_text()
    for link in links:
        assert not Path(link).is_absolute() and (moved / link).is_file(), link


def test_relative_to_folder_keeps_outside_paths_and_non_paths(tmp_path):
    inside, outside = tmp_path / "report" / "grids" / "a.png", tmp_path / "cache" / "weights"
    files = {"grids": {"a": str(inside), "b": None}, "cache": outside, "list": [inside], "count": 3}
    assert relative_to_folder(files, tmp_path / "report") == {
        "grids": {"a": "grids/a.png", "b": None}, "cache": str(outside), "list": ["grids/a.png"], "count": 3}
    assert relative_to_folder(str(tmp_path / "report" / ".." / "report" / "x.md"), tmp_path / "report") == "x.md"


def test_evaluate_pair_writes_a_consistent_report(photos32, tmp_path):
    from udp_datasets.sources.bundled import photo_patches

    clean = photo_patches(16, 48, seed=3)
    protected = [np.clip(a.astype(int) + np.random.default_rng(i).integers(-8, 9, a.shape), 0, 255)
                 .astype(np.uint8) for i, a in enumerate(clean)]
    settings = EvalSettings(victim=TINY_VICTIM, num_samples=16, attacks=("jpeg75",))
    report = evaluate_pair(clean, protected, tmp_path / "r", settings, progress=False)
    for name in ("report.json", "report.md", "samples.png", "loss_curves.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(saved["victims"]) == {"reference", "clean", "protected", "protected+jpeg75"}
    assert saved["victims"]["clean"]["fd_ratio_vs_clean"] == 1.0
    assert saved["data"] == {"train": 36, "holdout": 12, "holdout_fraction": 0.25}
    md = (tmp_path / "r" / "report.md").read_text()
    for name in ("clean", "protected", "protected+jpeg75"):
        fd = saved["victims"][name]["fd"]
        assert re.search(rf"\| {re.escape(name)} \| {fd:.3f} \|", md), name
    assert f"max L-inf {saved['perturbation']['protected']['linf_levels']} levels" in md
    assert report["victims"]["protected"]["fd"] == saved["victims"]["protected"]["fd"]
    # the dataset card embeds this block verbatim (publish/ reads report.json, never evaluate/)
    card = saved["card_markdown"]
    assert card == report["card_markdown"] and card.startswith(verdict(saved["victims"]) + "\n\n")
    assert results_table({k: v for k, v in saved["victims"].items() if k != "reference"}) in card
    assert "| protected+jpeg75 |" in card and "| reference |" not in card
    assert f"Victim `victim-tiny`, {TINY_VICTIM.train_steps} training steps at 16 px" in card
    assert_report_moves_with_its_links(tmp_path / "r", tmp_path / "published")


@pytest.mark.slow
def test_cli_evaluate_on_protect_output(tiny_config, tmp_path, photos32):
    import datasets
    from PIL import Image

    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(a) for a in photos32[:16]]})
    ds.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "clean"))
    assert main(["protect", str(tmp_path / "clean"), str(tmp_path / "prot"), "--surrogate",
                 tiny_config.surrogate, "--resolution", "16", "--steps", "2"]) == 0
    code = main(["evaluate", "--clean", str(tmp_path / "clean"), "--protected", str(tmp_path / "prot"),
                 "--out", str(tmp_path / "rep"), "--victim-steps", "5", "--victim-batch-size", "4",
                 "--num-samples", "8", "--sample-steps", "3", "--attacks", "none"])
    assert code == 0
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert set(saved["victims"]) == {"reference", "clean", "protected"}
    assert 0 < saved["perturbation"]["protected"]["linf_levels"] <= 8


def test_cli_evaluate_errors(tmp_path, capsys):
    assert main(["evaluate", "--clean", str(tmp_path), "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert "both --clean and --protected" in capsys.readouterr().err
    assert main(["evaluate", "--attacks", "jpeg10", "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert "unknown attack" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [(["--sample-steps", "1001"], "DDIM takes 1 to num_train_timesteps"),
                                            (["--sample-steps", "0"], "DDIM takes 1 to num_train_timesteps"),
                                            (["--sample-eta", "-1"], "sample_eta -1.0"),
                                            (["--victim-steps", "0"], "train_steps 0")])
def test_cli_evaluate_rejects_a_victim_recipe_before_training(tmp_path, capsys, flags, message):
    """A sampler setting DDIM cannot take used to fail only after every victim had trained."""
    assert main(["evaluate", *flags, "--out", str(tmp_path / "r")]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_metrics_package_exports_the_metric_functions():
    import udp_datasets.evaluate.metrics as metrics

    names = ["psnr", "ssim", "frechet_distance", "precision_recall", "hwc_to_nchw", "linf_levels"]
    assert not [name for name in names if not hasattr(metrics, name)]


def test_the_old_evaluate_module_paths_are_gone():
    """0.2 served the 0.1 paths (udp_datasets.evaluate.victim, ...) through compat.py; 0.3 does not."""
    import importlib

    for old in ("victim", "dreambooth", "experiment", "leads", "pipeline"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(f"udp_datasets.evaluate.{old}")


def test_ablation_switches_runs_the_switch_ablation(tmp_path, monkeypatch, capsys):
    """``ablation --switches`` measures the method switches (0.2 called the flag --leads; 0.3 drops it)."""
    from udp_datasets.cli.app import build_parser
    from udp_datasets.evaluate.experiments import switch_ablation

    seen = {}

    def fake(out, settings, count, size):
        seen.update(out=out, count=count, size=size)
        return {"victims": {"clean": {}, "unlearnable+eudp": {"fd_ratio_vs_clean": 1.1}}, "seconds": 0}

    monkeypatch.setattr(switch_ablation, "run_switches", fake)
    assert main(["ablation", "--switches", "--out", str(tmp_path), "--count", "40", "--size", "8"]) == EXIT_OK
    assert seen == {"out": str(tmp_path), "count": 40, "size": 8}
    assert "switches_table.md" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["ablation", "--leads"])
