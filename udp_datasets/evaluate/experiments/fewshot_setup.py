"""What a few-shot study builds before any protection: the pretrained models and the judge.

- :func:`prepare_pretrained`: the corpus latents and both pretrained latent pairs, in a cache folder
  keyed by recipe and corpus (shared by every study on this machine), the two UNets trained in
  parallel worker processes; and the pretrained victim's sample quality (FD vs its corpus, a grid).
- :func:`prepare_classifier`: the subject classifier trained on clean images only, its validation on
  held-out images, and the FD feature space (:mod:`..metrics.subject`), cached in the study folder.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..metrics.subject import FeatureSpace, SubjectClassifier, train_subject_classifier, validate_classifier
from ..victims.fewshot import decode, encode, sample, to_tensor
from ..victims.fewshot_pretrain import (cache_key, encode_corpus, install_shipped_pretraining, load_victim_unet,
                                        shipped_pretraining_key)
from .fewshot_tasks import PretrainJob, load_images, victim_codec

logger = logging.getLogger(__name__)

CLASSIFIER_CORPUS = 600
"""Corpus crops the classifier trains on (the next 300 validate it)."""


def pretrain_folder(corpus: Sequence[np.ndarray], settings: Any, cache_dir: Path) -> Path:
    """The cache folder of this pretraining. Pretrained from scratch where the package ships it
    (``shipped_pretraining`` off), it gets a folder of its own (``-scratch``): the two are the same recipe but
    not the same weights, and every protected set and victim of a study is keyed by this folder's name."""
    key = cache_key(settings.pretrain, corpus)
    scratch = not settings.shipped_pretraining and key == shipped_pretraining_key()
    return Path(cache_dir) / f"fewshot-pretrain-{key}{'-scratch' if scratch else ''}"


def prepare_pretrained(corpus: Sequence[np.ndarray], settings: Any, cache_dir: Path, pool: Any,
                       progress: bool = True, corpus_source: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Encode the corpus and pretrain both UNets (cached, as tasks of ``pool``, a ``fewshot.TaskPool``);
    returns the folder and what was measured. ``corpus_source`` (where the corpus came from and how it was
    read) goes into the report as is: the cache key holds only the corpus's hash."""
    folder = pretrain_folder(corpus, settings, cache_dir)
    state = install_shipped_pretraining(folder, settings.pretrain) if settings.shipped_pretraining else None
    if state is None:
        state = encode_corpus(corpus, folder)
    pool.map([("pretrain", PretrainJob(str(folder), kind, settings.pretrain)) for kind in ("victim", "surrogate")],
               "pretrain")
    info = {"folder": str(folder), "corpus_count": len(corpus), "corpus_source": corpus_source,
            "corpus_encode_seconds": state["seconds"], "latent_shift": state["shift"], "latent_scale": state["scale"],
            **{kind: _training_summary(folder / f"{kind}_training.json") for kind in ("victim", "surrogate")}}
    quality = folder / "quality.json"
    if not quality.exists():
        quality.write_text(json.dumps(pretrained_quality(folder, corpus, settings)))
    info["quality"] = json.loads(quality.read_text())
    return folder, info


def _training_summary(path: Path) -> dict[str, Any]:
    record = json.loads(path.read_text())
    return {k: record[k] for k in ("seconds", "final_loss", "parameters", "seed", "recipe", "source", "shipped")
            if k in record}


def pretrained_quality(folder: Path, corpus: Sequence[np.ndarray], settings: Any) -> dict[str, Any]:
    """FD of the pretrained victim's samples vs corpus crops, with references (another corpus split,
    TAEF2 round trips of the crops), in the classifier's feature space fitted on the corpus; the
    samples are kept as ``quality_samples.npz`` for the report's grid."""
    from ..metrics.subject import artifact_score, subject_features

    vae, unet, count = victim_codec(str(folder)), load_victim_unet(folder), settings.quality_samples
    samples = decode(vae, sample(unet, count, 777, settings.sample_steps, settings.sample_eta))
    np.savez_compressed(folder / "quality_samples.npz", images=samples[:48])
    n = min(300, len(corpus) // 2)
    a, b = to_tensor(corpus[:n]), to_tensor(corpus[n:2 * n])
    space = FeatureSpace(subject_features(a))
    round_trip = to_tensor(decode(vae, encode(vae, b)))
    x = to_tensor(samples)
    return {"samples_fd": space.fd(x, a), "corpus_split_fd": space.fd(b, a), "round_trip_fd": space.fd(round_trip, a),
            "uniform_noise_fd": space.fd(torch.rand(count, *a.shape[1:], generator=torch.Generator().manual_seed(0)), a),
            "samples_artifact_score": artifact_score(x, a), "count": count}


@dataclass
class Judge:
    """The study's judges, their validation and the FD feature space.

    ``classifier`` is the colour / texture classifier (:mod:`..metrics.subject`), ``shape`` the CNN shape
    judge (:mod:`..metrics.shape_judge`, trained when a subject is judged by its shape), ``faces`` the
    identity judge of the ``[faces]`` extra. A subject is scored by the judge of its kind
    (:meth:`for_subject`); the other judges' scores are reported beside it.
    """

    classifier: SubjectClassifier
    space: FeatureSpace
    validation: dict[str, float]
    seconds: float
    shape: Any = None
    kinds: dict[str, str] | None = None
    """Subject -> the judge that decides it: ``shape``, ``texture`` or ``faces``."""
    faces: Any = None
    shape_check: Any = None
    """The second shape judge (0.3.8): the same clean images and network, the other augmentations of
    :data:`~..metrics.shape_judge.JUDGE_AUGMENTS`. A protection decided by ``shape`` is shown only if it
    holds under this one too (:meth:`~.fewshot_scores.Scores.goal`): both are valid shape judges (held-out
    heart accuracy 0.96 and 1.00 on the grey heart), and one 8/255 method's erasure read 0.83 by one and 0.50 by
    the other (docs/efficacy.md, "A second judge")."""
    check_name: str | None = None
    """The second shape judge's name in :meth:`scorers` (``shape_strong`` beside a ``warp`` judge)."""

    def for_subject(self, subject: str) -> str:
        return (self.kinds or {}).get(subject, "texture")

    def check_for(self, subject: str) -> str | None:
        """The second judge of a subject decided by its shape, else None."""
        return self.check_name if self.for_subject(subject) == "shape" and self.shape_check is not None else None

    def scorers(self) -> dict[str, Any]:
        """Every trained class judge by name (``score(x01, subject)``)."""
        return {"texture": self.classifier, **({"shape": self.shape} if self.shape is not None else {}),
                **({self.check_name: self.shape_check} if self.shape_check is not None and self.check_name else {})}


def judge_kinds(subjects: dict[str, Any], validation: dict[str, float], shape_trained: bool) -> dict[str, str]:
    """The judge of each subject: its declared kind; ``auto`` (a user's folder) picks the class judge that
    recognises its held-out images best (higher held-out score), so a subject counts as learned by the
    judge that can recognise its kind."""
    kinds = {}
    for name, subject in subjects.items():
        kind = subject.kind
        if kind == "auto":
            shape = validation.get(f"shape/{name}_heldout_score", -1.0) if shape_trained else -1.0
            kind = "shape" if shape > validation.get(f"texture/{name}_heldout_score", -1.0) else "texture"
        kinds[name] = kind
    return kinds


def prepare_classifier(study: Any, corpus: Sequence[np.ndarray]) -> Judge:
    """Train (or load) the study's judges on clean images only (the subject's judge images, or its
    training images when it has none; corpus images; their TAEF2 round trips), validated on held-out
    images. Cached in the study folder under a key of what they were trained on (0.3.8 added the second shape
    judge to it, so a 0.3.7 folder trains its judges again: deterministic, the same weights on one machine)."""
    from ..data import data_hash
    from ..metrics.shape_judge import JUDGE_AUGMENTS, ShapeJudge, train_shape_judge

    path = study.out / "classifier.pt"
    vae = victim_codec(str(study.pretrained))
    subjects = {name: to_tensor(s.judge or s.train) for name, s in study.subjects.items()}
    needs_shape = any(s.kind in ("shape", "auto") for s in study.subjects.values())

    def round_trip(x: torch.Tensor) -> torch.Tensor:
        return to_tensor(decode(vae, encode(vae, x)))

    augment = study.settings.judge_augment
    check = next(a for a in JUDGE_AUGMENTS if a != augment)
    check_name = f"shape_{check}"  # unused where no second judge was trained (Judge.check_for, Judge.scorers)
    key = {"subjects": sorted(subjects), "pretrained": str(study.pretrained), "corpus": len(corpus),
           "data": data_hash([a for s in study.subjects.values() for a in (s.judge or s.train)]), "shape": needs_shape,
           "judge_steps": study.settings.judge_steps, "judge_augment": augment, "check_judge": check}
    if path.exists():
        state = torch.load(path, weights_only=True)
        if json.loads(state["key"]) == key:
            shapes = [ShapeJudge.from_state(state[k]) if k in state else None for k in ("shape", "shape_check")]
            validation = json.loads(state["validation"])
            return Judge(SubjectClassifier.from_state(state["classifier"]), FeatureSpace(state["features"].numpy()),
                         validation, float(state["seconds"]), shapes[0], judge_kinds(study.subjects, validation, needs_shape),
                         shape_check=shapes[1], check_name=check_name)
    start = time.perf_counter()
    n = min(CLASSIFIER_CORPUS, len(corpus) // 2)
    train_corpus, val_corpus = to_tensor(corpus[:n]), to_tensor(corpus[n:n + 300])
    clf, features = train_subject_classifier(train_corpus, subjects, round_trip)
    heldout = {name: to_tensor(load_images(study.out / "sets" / name / "heldout.npz")) for name in subjects}
    validation = {f"texture/{k}": v for k, v in validate_classifier(clf, val_corpus, heldout, round_trip).items()}
    shapes: list[Any] = [None, None]
    if needs_shape:  # the deciding judge and the second one, each validated on the same held-out images
        for i, (name, aug) in enumerate((("shape", augment), (check_name, check))):
            shapes[i] = train_shape_judge(train_corpus, subjects, round_trip, steps=study.settings.judge_steps,
                                          augment=aug)
            validation.update({f"{name}/{k}": v for k, v in
                               validate_classifier(shapes[i], val_corpus, heldout, round_trip).items()})
    seconds = time.perf_counter() - start
    state = {"key": json.dumps(key), "classifier": clf.state(), "features": torch.from_numpy(features),
             "validation": json.dumps(validation), "seconds": seconds,
             **{k: j.state() for k, j in zip(("shape", "shape_check"), shapes) if j is not None}}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a run killed while saving leaves no half-written judge under the cached name
    logger.info("judges' validation: %s", validation)
    return Judge(clf, FeatureSpace(features), validation, seconds, shapes[0], judge_kinds(study.subjects, validation, needs_shape),
                 shape_check=shapes[1], check_name=check_name)
