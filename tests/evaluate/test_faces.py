"""The faces extra: Anti-DreamBooth's FDFR and ISM from dlib, on real faces that ship offline
(scikit-image's astronaut, matplotlib's Grace Hopper), and ``evaluate-sd --judge faces``."""

from __future__ import annotations

import json
import logging
import os
import sys

import numpy as np
import pytest
from PIL import Image

from udp_datasets.cli.app import EXIT_OK, EXIT_USAGE, main
from udp_datasets.evaluate.metrics import faces
from udp_datasets.evaluate.metrics.faces import FaceJudge, FaceMetricsUnavailable, cosine, face_scores

from test_sd_lora import PROMPT, subject, tiny_sd  # noqa: F401 (fixtures)

needs_extra = pytest.mark.skipif(not faces.faces_available(), reason="the faces extra (dlib) is not installed")


def _resize(image: np.ndarray, width: int) -> np.ndarray:
    height = round(image.shape[0] * width / image.shape[1])
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def judge() -> FaceJudge:
    return FaceJudge().load()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="module")
def hopper() -> np.ndarray:
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def no_faces() -> list[np.ndarray]:
    from skimage import data

    return [data.coffee(), np.full((64, 64, 3), 128, np.uint8)]


@needs_extra
def test_the_astronaut_has_a_face_and_coffee_has_none(judge, astronaut, no_faces):
    assert judge.detect([astronaut]) == [True]
    assert judge.detect(no_faces) == [False, False]
    assert judge.fdfr([astronaut]) == 0.0
    assert judge.fdfr(no_faces) == 1.0
    assert judge.fdfr([astronaut, *no_faces]) == pytest.approx(2 / 3)


@needs_extra
def test_a_64px_face_is_found_after_upscaling(judge, astronaut):
    face64 = _resize(astronaut[20:260, 100:340], 64)  # the face fills the image: ~50 px, under dlib's ~80
    assert face64.shape == (64, 64, 3)
    assert judge.detect([face64]) == [True]
    assert FaceJudge(min_side=64).detect([face64]) == [False]  # not upscaled: too small for the detector


@needs_extra
def test_the_same_face_is_closer_than_another_person(judge, astronaut, hopper):
    crop, small_crop = astronaut[20:260, 100:340], _resize(astronaut[40:240, 130:330], 96)
    full, a, b, other = judge.embeddings([astronaut, crop, small_crop, hopper])
    assert all(e is not None and e.shape == (128,) for e in (full, a, b, other))
    same = min(cosine(full, a), cosine(full, b), cosine(a, b))
    assert same > max(cosine(full, other), cosine(a, other), cosine(b, other))
    assert judge.ism([small_crop], [astronaut, crop]) > judge.ism([hopper], [astronaut, crop])


@needs_extra
def test_ism_is_undefined_without_reference_faces(judge, astronaut, no_faces, caplog):
    with caplog.at_level(logging.WARNING, logger=faces.__name__):
        assert judge.ism([astronaut], no_faces) is None
    assert "no face found in any of the 2 reference images" in caplog.text
    assert judge.ism(no_faces, [astronaut]) is None  # no generated face either: FDFR says it all


@needs_extra
def test_face_scores_count_undetected_faces_in_fdfr_only(judge, astronaut, hopper, no_faces):
    scores = face_scores([astronaut, *no_faces], [astronaut], judge)
    assert scores["count"] == 3 and scores["faces_found"] == 1 and scores["reference_faces"] == 1
    assert scores["fdfr"] == pytest.approx(2 / 3)
    assert scores["ism"] == pytest.approx(1.0) and scores["identity_distance"] == pytest.approx(0.0, abs=1e-6)
    other = face_scores([hopper], [astronaut], judge)
    assert other["fdfr"] == 0.0 and other["ism"] < scores["ism"] and other["identity_distance"] > 0.6


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dlib", None)  # import dlib now raises ImportError
    assert not faces.faces_available()
    with pytest.raises(FaceMetricsUnavailable, match=r"pip install 'udp-datasets\[faces\]'"):
        FaceJudge().load()
    with pytest.raises(ImportError):  # FaceMetricsUnavailable is an ImportError
        face_scores([np.zeros((8, 8, 3), np.uint8)], [np.zeros((8, 8, 3), np.uint8)])


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="detector"):
        FaceJudge(detector="retinaface")
    with pytest.raises(ValueError, match="uint8"):
        faces._rgb(np.zeros((8, 8, 3), np.float32))


def test_evaluate_sd_judge_faces_without_the_extra_is_a_usage_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(faces, "faces_available", lambda: False)
    code = main(["evaluate-sd", "--model", str(tmp_path / "no-model"), "--clean", str(tmp_path / "c"),
                 "--protected", str(tmp_path / "p"), "--prompt", "a photo of sks person", "--judge", "faces",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "pip install 'udp-datasets[faces]'" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # refused before anything ran


@needs_extra
def test_evaluate_sd_judge_faces_reports_fdfr_and_ism(tiny_sd, subject, tmp_path, one_torch_thread):  # noqa: F811
    out = tmp_path / "faces-report"
    args = ["evaluate-sd", "--model", tiny_sd, "--clean", subject[0], "--protected", subject[1],
            "--prompt", PROMPT, "--out", str(out), "--steps", "1", "--lora-rank", "2", "--resolution", "32",
            "--num-samples", "2", "--sample-steps", "2", "--batch-size", "1", "--device", "cpu", "--judge", "faces"]
    assert main(args) == EXIT_OK
    saved = json.loads((out / "report.json").read_text())
    assert "RetinaFace" in saved["faces"]["note"]
    for name in ("clean", "protected"):  # photo patches and 32 px samples of a 1-step victim: no faces
        assert saved["victims"][name]["faces"] == {"fdfr": 1.0, "ism": None, "identity_distance": None,
                                                   "faces_found": 0, "count": 2, "reference_faces": 0}
    md = (out / "report.md").read_text()
    assert "## Faces" in md and "| clean | 1.000 | n/a | n/a | 0/2 | 0 |" in md
