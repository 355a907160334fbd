"""The command line end to end on real image files, including bad ones."""

import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from udp_datasets.cli.app import EXIT_QUARANTINED, EXIT_USAGE, main
from udp_datasets.jobs.dataset_job import load_protected

from test_verify import make_source

FLAGS = ["--resolution", "16", "--fit-rounds", "2", "--fit-surrogate-steps", "5", "--fit-pgd-steps", "1",
         "--steps", "3", "--batch-size", "4"]
PIXEL = ["--surrogate", "pixel"]  # the built-in pixel surrogate fitted on the data (the default before 0.3)


@pytest.fixture()
def image_folder(tmp_path, photos32, grey_faces):
    root = make_source(tmp_path / "pictures", photos32, grey_faces)
    (root / "cats" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "faces" / "empty.png").write_bytes(b"")
    return root


def test_protect_folder_quarantines_bad_files(image_folder, tmp_path, capsys):
    dst = tmp_path / "out"
    code = main(["protect", str(image_folder), str(dst), "--epsilon", "8/255", *PIXEL, *FLAGS])
    assert code == EXIT_QUARANTINED
    printed = capsys.readouterr().out
    assert "protected   6 images" in printed and "quarantined 2" in printed
    assert f"({dst}/data, Arrow)" in printed and "--format imagefolder" in printed  # pictures in, not out: said
    errors = [json.loads(line) for line in (dst / "errors.jsonl").read_text().splitlines()]
    assert sorted(e["key"].rsplit("/", 1)[-1] for e in errors) == ["broken.jpg", "empty.png"]
    ds = load_protected(dst)
    assert len(ds) == 6 and "label" in ds.column_names
    raw = ds.cast_column("image", datasets.Image(decode=False))["image"]
    assert all(v["bytes"].startswith(b"\x89PNG") for v in raw)
    summary = json.loads((dst / "udp_protection.json").read_text())
    assert summary["count"] == 6 and summary["errors"] == 2 and 0 < summary["max_linf_levels"] <= 8
    assert summary["surrogate"]["sha256"] and summary["fit"]["num_samples"] == 6
    manifest = datasets.Dataset.from_parquet(str(dst / "manifest.parquet"))
    assert len(manifest) == 6 and all(len(h) == 64 for h in manifest["source_sha256"])
    assert sorted(manifest["width"]) == [25, 25, 32, 32, 32, 32] and max(manifest["linf"]) <= 8
    assert not list(tmp_path.glob(".out.tmp-*"))  # no temporary left behind


def test_imagefolder_output_keeps_relative_paths(image_folder, tmp_path, capsys):
    dst = tmp_path / "png"
    code = main(["protect", str(image_folder), str(dst), "--format", "imagefolder", "--allow-errors", *PIXEL,
                 *FLAGS])
    assert code == 0 and "--format imagefolder" not in capsys.readouterr().out
    files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*.png"))
    assert files == ["cats/photo0.png", "cats/photo1.png", "cats/photo2.png", "cats/photo3.png",
                     "faces/face0.png", "faces/face1.png"]
    clean = np.asarray(Image.open(image_folder / "faces" / "face0.png"))
    prot = np.asarray(Image.open(dst / "faces" / "face0.png"))
    assert prot.shape == clean.shape and 0 < np.abs(prot.astype(int) - clean).max() <= 8
    back = datasets.load_dataset("imagefolder", data_dir=str(dst), split="train")
    assert len(back) == 6


def test_refuses_existing_output_and_bad_flags(image_folder, tmp_path, capsys):
    (tmp_path / "exists").mkdir()
    assert main(["protect", str(image_folder), str(tmp_path / "exists"), *FLAGS]) == EXIT_USAGE
    assert "already exists" in capsys.readouterr().err
    assert main(["protect", str(image_folder), str(tmp_path / "o"), "--epsilon", "2.5"]) == EXIT_USAGE
    assert "outside (0, 1]" in capsys.readouterr().err
    assert main(["protect", str(image_folder), str(tmp_path / "o"), "--image-column", "img"]) == EXIT_USAGE
    assert "no image column 'img'" in capsys.readouterr().err
    assert main(["protect", str(tmp_path / "nothing"), str(tmp_path / "o")]) == EXIT_USAGE
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["protect", "a", "b", "--objective", "nope"])


def test_fit_then_protect_with_saved_surrogate(image_folder, tmp_path):
    surrogate = tmp_path / "surrogate"
    assert main(["fit", str(image_folder), str(surrogate), *FLAGS, "--objective", "adversarial"]) == 0
    assert (surrogate / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert json.loads((surrogate / "udp_fit.json").read_text())["fit"]["num_samples"] == 6
    dst = tmp_path / "out"
    code = main(["protect", str(image_folder), str(dst), "--surrogate", str(surrogate), "--objective",
                 "adversarial", "--timesteps", "uniform", "--random-start", "--allow-errors", *FLAGS])
    assert code == 0
    summary = json.loads((dst / "udp_protection.json").read_text())
    assert summary["fit"] is None and summary["config"]["random_start"] is True
    assert summary["config"]["surrogate"] == str(surrogate)


def test_config_command_merges_file_and_flags(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"steps": 77, "objective": "adversarial"}))
    assert main(["config", "--config-file", str(cfg), "--epsilon", "4", "--no-random-start"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["steps"] == 77 and out["objective"] == "adversarial" and out["epsilon"] == pytest.approx(4 / 255)


def test_saved_dataset_source_and_console_script(tmp_path, photos32):
    ds = datasets.Dataset.from_dict({"picture": [Image.fromarray(a) for a in photos32[:3]], "i": [1, 2, 3]})
    ds = ds.cast_column("picture", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    proc = subprocess.run([sys.executable, "-m", "udp_datasets.cli", "protect", str(tmp_path / "saved"),
                           str(tmp_path / "out"), "--image-column", "picture", *PIXEL, *FLAGS],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "protected   3 images" in proc.stdout and "--format imagefolder" not in proc.stdout  # a dataset in
    assert load_protected(tmp_path / "out")["i"] == [1, 2, 3]


@pytest.mark.slow
def test_demo_quick(tmp_path):
    """The demo protects through the shipped latent pair and writes its picture with the two decode columns."""
    from udp_datasets.cli.demo import run_demo
    from udp_datasets.models import SHIPPED_PAIR_SHA256

    summary = run_demo(tmp_path / "demo", quick=True)
    assert summary["count"] == summary["source_images"]
    assert 0 < summary["max_linf_levels"] <= summary["budget_levels"] == 8
    assert summary["surrogate"]["source"] == "taef2" and summary["surrogate"]["sha256"] == SHIPPED_PAIR_SHA256
    assert summary["config"]["config_version"] == 2
    assert summary["picture_columns"] == ["clean", "protected", "perturbation x16", "TAEF2 decode: clean",
                                          "TAEF2 decode: protected"]
    for key in ("latent_shift", "noise_latent_shift", "decode_psnr_db", "noise_decode_psnr_db"):
        assert np.isfinite(summary[key]["mean"]) and summary[key]["min"] <= summary[key]["mean"] <= summary[key]["max"]
    assert summary["latent_shift"]["min"] > 0 and summary["decode_psnr_db"]["max"] < 100  # the decodes differ
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved["mean_psnr_db"] == summary["mean_psnr_db"]
    assert saved["latent_shift"] == summary["latent_shift"]

    picture = np.asarray(Image.open(tmp_path / "demo" / "side_by_side.png").convert("RGB")).astype(int)
    cell, gap, header = 144, 8, 16  # side_by_side's columns: 5 of ``cell`` px, ``gap`` apart, under a header
    assert picture.shape[1] == 5 * cell + 4 * gap and (picture.shape[0] - header) % cell == 0
    body = picture[header:]
    column = [body[:, i * (cell + gap): i * (cell + gap) + cell] for i in range(5)]
    clean, protected, _, decode_clean, decode_protected = column
    assert decode_clean.std() > 10 and decode_protected.std() > 10  # pictures, not blank tiles
    assert np.abs(decode_clean - clean).mean() > 0.5  # TAEF2's round trip, not a copy of the clean column
    assert np.abs(protected - clean).mean() > 0 and np.abs(decode_protected - decode_clean).mean() > 0.5


def test_demo_runs_protect_default():
    """The demo's method is what ``protect SRC DST`` runs with no flags (config version 2, shipped pair)."""
    from udp_datasets.cli.app import build_parser
    from udp_datasets.cli.config_flags import protect_config_from_args
    from udp_datasets.cli.demo import LATENT_CONFIG

    default = protect_config_from_args(build_parser().parse_args(["protect", "src", "dst"]))
    assert LATENT_CONFIG == default.replace(batch_size=LATENT_CONFIG.batch_size)
    assert LATENT_CONFIG.surrogate == "taef2" and LATENT_CONFIG.config_version == 2
