"""The evaluation that can see protection (issue 17), for correctness: generated structured subjects,
the shape judge, per-channel latent normalisation, metrics on grey images and small folders, and the
report's controls."""

from __future__ import annotations

import hashlib
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from udp_datasets.evaluate.glyphs import CORPUS_CHARACTERS, STRUCTURED_SUBJECTS, glyph_corpus
from udp_datasets.evaluate.subjects import structured_subject
from udp_datasets.evaluate.victims.fewshot import to_tensor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _digests(images) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in images}


def test_structured_subjects_are_deterministic_and_never_overlap_the_corpus():
    a, b = structured_subject("hash", 6, 6, seed=0, n_judge=6), structured_subject("hash", 6, 6, seed=0, n_judge=6)
    assert all(np.array_equal(x, y) for x, y in zip(a.train + a.heldout + a.judge, b.train + b.heldout + b.judge))
    other_seed = structured_subject("hash", 6, 6, seed=1, n_judge=6)
    assert not _digests(other_seed.train) & _digests(a.train)
    splits = [_digests(a.train), _digests(a.heldout), _digests(a.judge)]
    assert sum(map(len, splits)) == len(set().union(*splits)) == 18  # no drawing in two splits
    corpus = glyph_corpus(60, seed=0)
    assert not set(STRUCTURED_SUBJECTS.values()) & set(CORPUS_CHARACTERS)
    assert not _digests(corpus) & set().union(*splits)
    assert all(x.shape == (64, 64, 3) and x.dtype == np.uint8 for x in corpus + a.train)
    assert structured_subject("percent", 2, 2, size=128, n_judge=0).train[0].shape == (128, 128, 3)
    assert a.kind == "shape"


def test_the_shape_judge_is_colour_blind_and_deterministic():
    from udp_datasets.evaluate.metrics.shape_judge import shape_input, train_shape_judge

    x = to_tensor(glyph_corpus(4, seed=3))
    inverted = 1 - x  # a dark glyph on light ground becomes a light one on dark ground
    assert torch.allclose(shape_input(inverted), -shape_input(x), atol=1e-5)
    tinted = (x * torch.tensor([0.5, 1.0, 0.8]).view(1, 3, 1, 1)).mean(1, keepdim=True).repeat(1, 3, 1, 1)
    assert torch.allclose(shape_input(tinted), shape_input(tinted * 0.5 + 0.2), atol=1e-4)  # contrast and level
    corpus = to_tensor(glyph_corpus(32, seed=1))
    subjects = {"hash": to_tensor(structured_subject("hash", 2, 2, n_judge=16).judge)}
    one = train_shape_judge(corpus, subjects, lambda t: t, steps=3, seed=5)
    two = train_shape_judge(corpus, subjects, lambda t: t, steps=3, seed=5)
    assert np.array_equal(one.proba(corpus[:4]), two.proba(corpus[:4]))
    assert one.names == ["corpus", "hash"]
    back = type(one).from_state(one.state())
    assert np.array_equal(back.proba(corpus[:4]), one.proba(corpus[:4]))


def test_the_strong_judge_augments_more_deterministically_and_is_cached_apart():
    """``--judge-augment strong`` bends, thickens and textures the clean training images (what a person still
    reads as the shape)."""
    from udp_datasets.evaluate.metrics.shape_judge import augment_shapes, restroke, shape_input, train_shape_judge

    x = shape_input(to_tensor(glyph_corpus(8, seed=2)))
    warp = augment_shapes(x, torch.Generator().manual_seed(0))
    strong = augment_shapes(x, torch.Generator().manual_seed(0), "strong")
    again = augment_shapes(x, torch.Generator().manual_seed(0), "strong")
    assert torch.equal(strong, again) and strong.shape == x.shape and torch.isfinite(strong).all()
    assert (strong - x).abs().mean() > (warp - x).abs().mean()
    thick = restroke(x, torch.Generator().manual_seed(1))
    changed = [i for i in range(8) if not torch.equal(thick[i], x[i])]
    assert changed and all((thick[i] <= x[i] + 1e-6).all() for i in changed)  # dark glyphs: strokes only grow
    with pytest.raises(ValueError, match="choose from warp, strong"):
        augment_shapes(x, torch.Generator(), "elastic")
    corpus, judge = to_tensor(glyph_corpus(16, seed=1)), {"hash": to_tensor(structured_subject("hash", 2, 2, n_judge=8).judge)}
    one = train_shape_judge(corpus, judge, lambda t: t, steps=2, seed=3, augment="strong")
    two = train_shape_judge(corpus, judge, lambda t: t, steps=2, seed=3, augment="strong")
    assert np.array_equal(one.proba(corpus[:4]), two.proba(corpus[:4]))


def test_per_channel_normalisation_round_trips_through_a_saved_pair(tmp_path):
    from udp_datasets.models import load_surrogate
    from udp_datasets.models.latent import save_latent_pair, sd_scheduler
    from udp_datasets.evaluate.victims.fewshot import (build_unet, decode, encode, latent_statistics, normalised_taef2,
                                                       raw_latents)

    x = to_tensor(glyph_corpus(24, seed=2))
    raw = raw_latents(normalised_taef2(None), x)
    stats = latent_statistics(raw)
    vae = normalised_taef2(stats, per_channel=True)
    z = encode(vae, x)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(32), atol=1e-4)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(32), atol=1e-4)  # every channel standardised
    save_latent_pair(tmp_path / "pair", vae, build_unet("fewshot-surrogate", 8, seed=0), sd_scheduler())
    surrogate = load_surrogate(str(tmp_path / "pair"))
    assert surrogate.normalisation.per_channel
    with torch.no_grad():
        assert torch.allclose(surrogate.encode(x), z, atol=1e-5)
        assert np.abs(decode(vae, z).astype(int) - (surrogate.decode(z) * 255).round().permute(0, 2, 3, 1).numpy()).max() <= 1
    scalar = normalised_taef2(stats, per_channel=False)
    assert not load_surrogate_of(tmp_path / "scalar", scalar).normalisation.per_channel
    assert torch.allclose(encode(scalar, x), (raw - stats["shift"]) * stats["scale"], atol=1e-5)


def load_surrogate_of(folder: Path, vae):
    from udp_datasets.models import load_surrogate
    from udp_datasets.models.latent import save_latent_pair, sd_scheduler
    from udp_datasets.evaluate.victims.fewshot import build_unet

    save_latent_pair(folder, vae, build_unet("fewshot-surrogate", 8, seed=0), sd_scheduler())
    return load_surrogate(str(folder))


def test_metrics_are_defined_on_grey_images_and_refuse_small_folders():
    from udp_datasets.evaluate.metrics.subject import FeatureSpace, artifact_score, subject_features

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (40, 64, 64, 1), dtype=np.uint8), 3, axis=3)
    samples = to_tensor(list(grey[:20]))
    # a sample set with a touch of colour: before issue 17 this FD ran to 1e5-1e6 (std 1e-6 features)
    tinted = samples.clone()
    tinted[:, 0] = (tinted[:, 0] * 0.99 + 0.005)
    space = FeatureSpace(subject_features(to_tensor(list(grey))))
    fd = space.fd(tinted, to_tensor(list(grey[20:])))
    assert fd is not None and math.isfinite(fd) and fd < 100
    assert math.isfinite(artifact_score(tinted, to_tensor(list(grey[20:]))))
    assert space.fd(samples[:5], to_tensor(list(grey[20:]))) is None  # too few for a 16-d covariance


def test_report_verdict_only_after_the_controls_pass():
    from udp_datasets.evaluate.experiments.fewshot_report import harness_verdict
    from udp_datasets.evaluate.experiments.fewshot_scores import HARNESS_FAILED

    goal = {"method": "udp", "reaches_goal_on_every_subject": True, "beats_noise_on_every_subject": True,
            "by_erasure_on_every_subject": True}
    assert HARNESS_FAILED in harness_verdict({"passed": False}, goal).lower()
    assert "no verdict" in harness_verdict({"passed": None}, goal)
    assert "measured as effective" in harness_verdict({"passed": True}, goal)


def test_judges_are_trained_on_clean_images_only(tmp_path, monkeypatch):
    """Spy on both judges' training inputs in a tiny structured study: every image they get is a clean
    corpus or judge image (their TAEF2 round trips are made inside, from these)."""
    from test_fewshot import TINY, open_gates

    from udp_datasets.evaluate.experiments import fewshot, fewshot_setup
    from udp_datasets.evaluate.metrics import shape_judge

    seen: list[torch.Tensor] = []

    def spy(original):
        def wrapped(corpus, subjects, round_trip, *args, **kwargs):
            seen.extend([corpus, *subjects.values()])
            return original(corpus, subjects, round_trip, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(fewshot_setup, "train_subject_classifier", spy(fewshot_setup.train_subject_classifier))
    monkeypatch.setattr(shape_judge, "train_shape_judge", spy(shape_judge.train_shape_judge))
    open_gates(monkeypatch)
    settings = replace(TINY, subjects=("hash",), modes=("full",), purifications=(), sweep_levels=(),
                       methods=("noise", "photoguard"))
    subject = structured_subject("hash", settings.n_train, settings.n_heldout, n_judge=8)
    corpus = glyph_corpus(settings.pretrain.corpus_count)
    fewshot.run_fewshot(tmp_path / "study", settings, {"hash": subject}, corpus, tmp_path / "cache", progress=False)
    assert len(seen) == 6  # corpus + subject, for each judge (texture, shape, the second shape judge)
    clean = _digests(corpus) | _digests(subject.judge)
    given = _digests([(t.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy() for x in seen for t in x])
    assert given <= clean
    others = set()
    for path in (tmp_path / "study").rglob("*.npz"):
        if path.parent.name != "hash" or not path.name.startswith(("clean", "heldout")):
            others |= _digests(np.load(path)["images"])
    assert others and not given & others  # no protected, substituted or generated image reached a judge


def test_fewshot_judge_faces_scores_identity_on_a_face_folder(tmp_path, capsys):
    """--judge faces wires the [faces] judge into the study: the subject score is ISM and FDFR is reported.
    The tiny CPU victims draw no faces, so the harness must fail its controls and say so (exit 1)."""
    pytest.importorskip("dlib")
    from PIL import Image
    from skimage.data import astronaut
    from test_fewshot import TINY

    from udp_datasets.cli.app import EXIT_FAILED, main
    from udp_datasets.evaluate.experiments import fewshot

    face = astronaut()[20:220, 130:330]
    folder = tmp_path / "faces"
    folder.mkdir()
    for i in range(6):
        crop = face[i * 4:200 - i * 4, i * 3:200 - i * 5]
        Image.fromarray(np.ascontiguousarray(crop)).resize((64, 64)).save(folder / f"{i}.png")
    settings = replace(TINY, modes=("full",), purifications=(), sweep_levels=())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fewshot, "REDUCED", settings)
        code = main(["evaluate", "--regime", "fewshot", "--subject", str(folder), "--judge", "faces",
                     "--out", str(tmp_path / "r"), "--cache-dir", str(tmp_path / "cache"), "--methods", "udp"])
    assert code == EXIT_FAILED
    import json

    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["judges"] == {"faces": "faces"}
    rows = {row["set"]: row for row in report["tables"]["full"]}
    if rows:  # the controls ran (the victim check may stop the study before them)
        assert rows["clean"]["per_subject"]["faces"]["fdfr"] is not None
