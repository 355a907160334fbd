"""The face metrics of Anti-DreamBooth: FDFR (face detection failure rate) and ISM (identity similarity).

Anti-DreamBooth (Van Le et al., ICCV 2023) judges a protected face set by what a DreamBooth victim
draws from it: FDFR is the share of generated images in which no face is detected, ISM the cosine
similarity between a generated face's identity embedding and the mean embedding of the clean images'
faces, averaged over the images with a face. Protection works when FDFR rises and ISM falls.

The paper uses RetinaFace and ArcFace; here both metrics come from dlib (the optional extra
``udp-datasets[faces]``: the prebuilt ``dlib-bin`` wheel and ``face_recognition_models``, the model
files), installed from PyPI with nothing fetched at run time. The definitions are the same, the
numbers are not interchangeable with the paper's: dlib's HOG detector finds frontal faces only, and
dlib's 128-d descriptors run high in cosine (astronaut vs Grace Hopper 0.88, crops of one face
0.97-1.0), so ISM moves in a narrow band. Each score therefore also reports ``identity_distance``,
the mean Euclidean distance that dlib's model was trained on (under 0.6: the same person, by dlib's
own threshold).
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'udp-datasets[faces]'"
DETECTORS = ("hog", "cnn")


class FaceMetricsUnavailable(ImportError):
    """The ``faces`` extra (dlib and its models) is not installed."""


def faces_available() -> bool:
    """Whether dlib and face_recognition_models can be imported (found, not yet loaded)."""
    return all(importlib.util.find_spec(name) is not None for name in ("dlib", "face_recognition_models"))


def _model_path(name: str) -> str:
    """A model file of face_recognition_models, found without importing it.

    Its ``__init__`` imports ``pkg_resources``, which recent setuptools no longer ship, so the files
    are located through the package's import spec instead of its helper functions.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceMetricsUnavailable(f"face_recognition_models is not installed: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], "models", name)
    if not os.path.isfile(path):
        raise FaceMetricsUnavailable(f"face_recognition_models has no {name}; reinstall it: {INSTALL_HINT}")
    return path


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) C-contiguous uint8, which is what dlib accepts (greyscale and RGBA are converted)."""
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f"face metrics take uint8 images, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"face metrics take (H, W, 3) images, got shape {a.shape}")
    return np.ascontiguousarray(a[:, :, :3])


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class FaceJudge:
    """dlib's face detector, 5-point landmarks and ResNet identity model, loaded on first use.

    Detection: the HOG detector by default. It finds faces of about 80 px and up, frontal ones only,
    in ~0.1 s per 512 px image on one core; ``detector="cnn"`` (dlib's MMOD CNN) also finds turned
    faces, closer to the paper's RetinaFace, but takes ~1.3 s per 512 px image on one CPU core
    (dlib-bin has no CUDA). Small images cannot show an 80 px face, so each image whose shorter side is
    under ``min_side`` is first upscaled (Lanczos) to it, and large ones are downscaled to ``max_side``;
    the detector then runs with ``upsample`` pyramid doublings (1: faces down to ~40 px of the resized
    image). A 64 px image whose face fills it is thus judged at 256 px. The landmarks are the 5-point
    model (not the 68-point one, whose training data excludes commercial use).
    """

    def __init__(self, detector: str = "hog", min_side: int = 256, max_side: int = 1024, upsample: int = 1):
        if detector not in DETECTORS:
            raise ValueError(f"detector {detector!r}: choose from {DETECTORS}")
        self.detector_name, self.min_side, self.max_side, self.upsample = detector, min_side, max_side, upsample
        self._models: tuple[Any, Any, Any] | None = None

    def load(self) -> "FaceJudge":
        """Load the models now (the first metric call does it otherwise); raises FaceMetricsUnavailable."""
        if self._models is None:
            try:
                import dlib
            except ImportError as exc:
                raise FaceMetricsUnavailable(f"the face metrics need dlib: {INSTALL_HINT} ({exc})") from exc
            if self.detector_name == "cnn":
                detector = dlib.cnn_face_detection_model_v1(_model_path("mmod_human_face_detector.dat"))
            else:
                detector = dlib.get_frontal_face_detector()
            self._models = (detector, dlib.shape_predictor(_model_path("shape_predictor_5_face_landmarks.dat")),
                            dlib.face_recognition_model_v1(_model_path("dlib_face_recognition_resnet_model_v1.dat")))
            logger.debug("face judge loaded (%s detector)", self.detector_name)
        return self

    def _resized(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        a = _rgb(image)
        h, w = a.shape[:2]
        scale = self.min_side / min(h, w) if min(h, w) < self.min_side else min(1.0, self.max_side / max(h, w))
        if scale == 1.0:
            return a
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        return np.asarray(Image.fromarray(a).resize(size, Image.Resampling.LANCZOS))

    def _largest_face(self, image: np.ndarray) -> Any:
        """The largest detected face's rectangle in ``image`` (already resized), or None."""
        detector = self.load()._models[0]
        found = detector(image, self.upsample)
        rects = [d.rect for d in found] if self.detector_name == "cnn" else list(found)
        return max(rects, key=lambda r: r.area()) if rects else None

    def detect(self, images: Sequence[np.ndarray]) -> list[bool]:
        """Whether a face is found in each image."""
        return [self._largest_face(self._resized(a)) is not None for a in images]

    def embeddings(self, images: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """The 128-d identity descriptor of each image's largest face; None where no face is found."""
        _, landmarks, recogniser = self.load()._models
        out: list[np.ndarray | None] = []
        for image in images:
            a = self._resized(image)
            rect = self._largest_face(a)
            out.append(None if rect is None else
                       np.asarray(recogniser.compute_face_descriptor(a, landmarks(a, rect)), dtype=np.float64))
        return out

    def fdfr(self, images: Sequence[np.ndarray]) -> float:
        """Face detection failure rate: the share of ``images`` in which no face is found."""
        if not len(images):
            raise ValueError("FDFR of no images")
        return 1.0 - float(np.mean(self.detect(images)))

    def ism(self, images: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> float | None:
        """Identity score matching, as Anti-DreamBooth computes it: the cosine similarity of each image's
        face embedding to the mean embedding of the references' faces, averaged over the images.

        Images without a detected face are left out here (FDFR counts them). None, with the reason
        logged, when no reference or no image has a face.
        """
        return identity_scores(self.embeddings(images), self.embeddings(references))["ism"]


def identity_scores(embeddings: Sequence[np.ndarray | None],
                    reference_embeddings: Sequence[np.ndarray | None]) -> dict[str, Any]:
    """ISM and mean identity distance of ``embeddings`` to the mean reference embedding (None: no face)."""
    refs = [e for e in reference_embeddings if e is not None]
    found = [e for e in embeddings if e is not None]
    out: dict[str, Any] = {"ism": None, "identity_distance": None, "reference_faces": len(refs)}
    if not refs:
        logger.warning("ISM undefined: no face found in any of the %d reference images", len(reference_embeddings))
        return out
    if not found:
        logger.warning("ISM undefined: no face found in any of the %d images", len(embeddings))
        return out
    centre = np.mean(refs, axis=0)
    out["ism"] = float(np.mean([cosine(e, centre) for e in found]))
    out["identity_distance"] = float(np.mean([np.linalg.norm(e - centre) for e in found]))
    return out


def face_scores(samples: Sequence[np.ndarray], references: Sequence[np.ndarray],
                judge: FaceJudge | None = None) -> dict[str, Any]:
    """FDFR and ISM of ``samples`` against the faces of ``references``, for reports.

    Returns ``fdfr``, ``ism`` (None when undefined), ``identity_distance`` (mean Euclidean distance
    to the mean reference embedding; dlib calls under 0.6 the same person), ``faces_found``, ``count``
    and ``reference_faces``. Each image is detected once.
    """
    if not len(samples):
        raise ValueError("face scores of no samples")
    judge = judge or FaceJudge()
    embeddings = judge.embeddings(samples)
    found = sum(e is not None for e in embeddings)
    scores = identity_scores(embeddings, judge.embeddings(references))
    return {"fdfr": 1.0 - found / len(samples), "ism": scores["ism"],
            "identity_distance": scores["identity_distance"], "faces_found": found, "count": len(samples),
            "reference_faces": scores["reference_faces"]}
