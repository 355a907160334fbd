"""Few-shot data: a generic pretraining corpus and a few subjects, from bundled photographs or a folder.

The few-shot regime (docs/efficacy.md, "Few-shot fine-tuning") needs three disjoint image sets:

- a **corpus** of generic real images a latent model is pretrained on (clean);
- per **subject** (one object, texture or style), 8-20 **training** images, the ones a maintainer
  would publish and protect, and **held-out** images of the same subject, never trained on, that
  the victims' samples and the subject classifier are checked against.

Bundled data (offline, from scikit-image and matplotlib): a subject is crops of ONE photograph that is
not in the corpus. Training crops come from one region of the photo, held-out crops from a disjoint
region (no pixel shared), so held-out images show the same subject (same object, texture and palette)
but content the victim never saw. :data:`SUBJECTS` names the photos and regions; :data:`CORPUS_PHOTOS`
the corpus. A user's own subject is a folder of images (:func:`folder_subject`), split at random into
training and held-out images; a user's corpus folder is cropped like the bundled one, or read whole
(:data:`CORPUS_MODES`).

Structured subjects (:mod:`.glyphs`): a character drawn in many fonts, sizes, positions, rotations,
strokes and colours, whose identity is its *shape*; their corpus is letters and digits drawn the same
way. Each has its own clean **judge** images (never trained on by a victim, never protected) that the
shape judge learns the subject from, besides the training and held-out images.

Every image is an (H, W, 3) uint8 array of ``size`` x ``size`` (64 by default: 8 x 8 x 32 TAEF2 latents;
128 gives 16 x 16 latents).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

SIZE = 64
N_JUDGE = 160
"""Clean drawings of a generated subject that only the shape judge learns from (besides train and held-out)."""


@dataclass(frozen=True)
class SubjectSpec:
    """Where a bundled subject's crops come from: regions are (y0, y1, x0, x1) of the source photo."""

    photo: str
    train_region: tuple[int, int, int, int]
    heldout_region: tuple[int, int, int, int]
    crop_sizes: tuple[int, int]
    """Smallest and largest crop side in source pixels (then resized to ``size``)."""
    what: str


SUBJECTS: dict[str, SubjectSpec] = {
    "cat": SubjectSpec("chelsea", (0, 300, 0, 290), (0, 300, 300, 451), (100, 150),
                       "an object: Chelsea the cat (fur, eyes, nose); held-out crops from the right of the photo"),
    "ihc": SubjectSpec("immunohistochemistry", (0, 330, 0, 512), (345, 512, 0, 512), (110, 160),
                       "a stain style: immunohistochemistry micrograph; held-out crops from its bottom third"),
    "retina": SubjectSpec("retina", (250, 800, 250, 1150), (860, 1200, 300, 1100), (170, 260),
                          "a texture and palette: retina fundus photograph; held-out crops from lower rows"),
}

CORPUS_PHOTOS = ("astronaut", "camera", "coffee", "rocket", "horse", "coins", "moon", "brick", "grass", "gravel",
                 "cell", "clock", "page", "text", "hubble_deep_field", "colorwheel", "stereo_motorcycle",
                 "grace_hopper")
"""scikit-image photographs (grey ones as RGB) and matplotlib's grace_hopper.jpg; never a subject's photo.
The corpus also holds scikit-image's LFW face crops (1 in 20 images), upscaled."""


@dataclass(frozen=True)
class Subject:
    """One subject's images: ``train`` (protected, fine-tuned on) and ``heldout`` (never trained on)."""

    name: str
    train: list[np.ndarray]
    heldout: list[np.ndarray]
    source: str
    kind: str = "texture"
    """``shape`` (judged by the CNN shape judge) or ``texture`` (the colour / texture judge); ``faces``
    for a user's face folder judged by identity (the ``[faces]`` extra)."""
    judge: list[np.ndarray] = field(default_factory=list)
    """Extra clean images of the subject that only the judge trains on (empty: it uses ``train``)."""

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "kind": self.kind, "train": len(self.train), "heldout": len(self.heldout),
                "judge": len(self.judge), "source": self.source}


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """Any scikit-image array (bool, grey, float in [0, 1], RGBA) as (H, W, 3) uint8."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(a * (255 if a.max() <= 1.0 else 1), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])


def load_photo(name: str) -> list[np.ndarray]:
    """A bundled photograph by name as RGB uint8 (``stereo_motorcycle`` gives both views)."""
    if name == "grace_hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        with Image.open(path) as img:
            return [np.asarray(img.convert("RGB"))]
    import skimage.data

    arr = getattr(skimage.data, name)()
    return [to_rgb(a) for a in arr] if isinstance(arr, tuple) else [to_rgb(arr)]


def resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    """Bicubic resize of a square crop to ``size`` x ``size``."""
    img = Image.fromarray(np.ascontiguousarray(arr)).resize((size, size), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.asarray(img, dtype=np.uint8)


def random_crops(img: np.ndarray, count: int, rng: np.random.Generator, sizes: tuple[int, int],
                 region: tuple[int, int, int, int] | None = None, size: int = SIZE) -> list[np.ndarray]:
    """``count`` random square crops (side uniform in ``sizes``) inside ``region``, flipped at random."""
    y0, y1, x0, x1 = region if region is not None else (0, img.shape[0], 0, img.shape[1])
    out = []
    for _ in range(count):
        side = int(rng.integers(sizes[0], min(sizes[1], y1 - y0, x1 - x0) + 1))
        y, x = int(rng.integers(y0, y1 - side + 1)), int(rng.integers(x0, x1 - side + 1))
        crop = img[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        out.append(resize_square(crop, size))
    return out


def bundled_subject(name: str, n_train: int = 12, n_heldout: int = 16, seed: int = 0, size: int = SIZE) -> Subject:
    """A bundled subject: training crops of one region of its photo, held-out crops of a disjoint one."""
    if name not in SUBJECTS:
        raise ValueError(f"unknown bundled subject {name!r}; choose from {sorted(SUBJECTS)}")
    spec = SUBJECTS[name]
    img = load_photo(spec.photo)[0]
    rng = np.random.default_rng(1000 + seed + sum(map(ord, name)))
    train = random_crops(img, n_train, rng, spec.crop_sizes, spec.train_region, size)
    heldout = random_crops(img, n_heldout, rng, spec.crop_sizes, spec.heldout_region, size)
    return Subject(name, train, heldout, f"scikit-image `{spec.photo}`: {spec.what}")


def structured_subject(name: str, n_train: int = 12, n_heldout: int = 24, seed: int = 0, size: int = SIZE,
                       n_judge: int = N_JUDGE) -> Subject:
    """A generated structured subject (:data:`~.glyphs.STRUCTURED_SUBJECTS`): its character in
    ``n_train`` training drawings, ``n_heldout`` held-out ones and ``n_judge`` more for the judge,
    each set from its own random stream (no drawing is shared)."""
    from .glyphs import STRUCTURED_SUBJECTS, glyph_images, subject_seed

    if name not in STRUCTURED_SUBJECTS:
        raise ValueError(f"unknown structured subject {name!r}; choose from {sorted(STRUCTURED_SUBJECTS)}")
    char = STRUCTURED_SUBJECTS[name]
    sets = {split: glyph_images(char, n, subject_seed(name, split, seed), size)
            for split, n in (("train", n_train), ("heldout", n_heldout), ("judge", n_judge))}
    return Subject(name, sets["train"], sets["heldout"],
                   f"generated: the character {char!r} in matplotlib's fonts, random size, rotation, stroke, "
                   "position and colours", kind="shape", judge=sets["judge"])


def any_subject(name: str, seed: int = 0, size: int = SIZE, n_train: int = 12, n_heldout: int = 24,
                n_judge: int = N_JUDGE) -> Subject:
    """A bundled subject by name: structured (glyphs, with ``n_judge`` judge drawings) or texture (photo crops)."""
    from .glyphs import STRUCTURED_SUBJECTS

    if name in STRUCTURED_SUBJECTS:
        return structured_subject(name, n_train, n_heldout, seed, size, n_judge)
    if name in SUBJECTS:
        return bundled_subject(name, n_train, n_heldout, seed, size)
    raise ValueError(f"unknown bundled subject {name!r}; choose from {sorted([*STRUCTURED_SUBJECTS, *SUBJECTS])}")


def log_uniform_crops(photos: Sequence[np.ndarray], count: int, rng: np.random.Generator, size: int,
                      smallest: int = 48) -> list[np.ndarray]:
    """``count`` crops spread evenly over ``photos``, side log-uniform from ``smallest`` to the short side,
    so both texture close-ups and whole scenes are common."""
    out: list[np.ndarray] = []
    for i in range(count):
        photo = photos[i % len(photos)]
        short = min(photo.shape[:2])
        side = int(math.exp(rng.uniform(math.log(min(smallest, short)), math.log(short))))
        out += random_crops(photo, 1, rng, (side, side), None, size)
    return out


def bundled_corpus(count: int = 3000, seed: int = 0, size: int = SIZE) -> list[np.ndarray]:
    """The generic pretraining corpus: crops of :data:`CORPUS_PHOTOS` and 1 in 20 LFW faces, shuffled."""
    import skimage.data

    photos = [p for name in CORPUS_PHOTOS for p in load_photo(name)]
    used = {spec.photo for spec in SUBJECTS.values()}
    assert not used & set(CORPUS_PHOTOS), "a subject's photo must never be in the corpus"
    rng = np.random.default_rng(seed)
    n_faces = count // 20
    out = log_uniform_crops(photos, count - n_faces, rng, size)
    faces = skimage.data.lfw_subset()
    for i in rng.choice(len(faces), n_faces, replace=len(faces) < n_faces):
        out.append(resize_square(to_rgb(faces[i]), size))
    return [out[i] for i in rng.permutation(len(out))]


def square(arr: np.ndarray, size: int) -> np.ndarray:
    """The central square of an image, resized to ``size`` (grey and RGBA become RGB)."""
    a = to_rgb(arr)
    h, w = a.shape[:2]
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    return resize_square(a[y:y + side, x:x + side], size)


def folder_subject(path: str | Path, holdout_fraction: float = 0.25, seed: int = 0, size: int = SIZE,
                   name: str | None = None, kind: str = "auto") -> Subject:
    """A user's own subject: every image of ``path`` (central square at ``size``), split at random into
    training images (protected and fine-tuned on) and held-out ones (at least 2 of each). ``kind``: the
    judge (``shape``, ``texture``, or ``auto``: the one that recognises the held-out images best)."""
    from .data import load_images, split_holdout

    images = [square(a, size) for a in load_images(str(path))]
    if len(images) < 4:
        raise ValueError(f"{path}: {len(images)} images; a subject needs at least 4 (2 to train on, 2 held out), "
                         "the field's regime is 8-20 training images")
    train_idx, hold_idx = split_holdout(len(images), holdout_fraction, seed)
    if len(hold_idx) < 2 or len(train_idx) < 2:
        raise ValueError(f"{path}: holdout fraction {holdout_fraction} leaves {len(train_idx)} training and "
                         f"{len(hold_idx)} held-out images; each needs at least 2")
    if len(train_idx) > 20:
        logger.warning("%s: %d training images; the few-shot regime is 8-20 (all are used)", path, len(train_idx))
    label = name or Path(path).name or "subject"
    return Subject(label, [images[i] for i in train_idx], [images[i] for i in hold_idx], f"folder {path}", kind=kind)


CORPUS_MODES = {"crops": "log-uniform crops of its images", "whole": "the central square of each image"}
"""How a corpus folder is read, and the words reports and provenance use for it: ``crops`` (for photographs:
texture close-ups and whole scenes) or ``whole`` (for folders of whole objects or shapes, where a crop would
cut the object apart and a victim would learn fragments)."""


BUNDLED_CORPUS = "bundled"
"""The corpus source that names the bundled photographs (and LFW faces): texture subjects' domain."""
GLYPH_CORPUS = "glyphs"
"""The corpus source that names the generated glyphs (letters and digits): structured subjects' domain."""
BUILT_IN_CORPORA = {BUNDLED_CORPUS: "bundled photographs", GLYPH_CORPUS: "generated glyphs"}
"""Every corpus name that is not a folder, and what it names (in messages)."""


def read_corpus(source: str | Path, count: int, seed: int, size: int, mode: str | None = None,
                named_by_user: bool = True) -> tuple[list[np.ndarray], dict[str, Any]]:
    """A corpus and the one description of it that reports and provenance files both carry.

    ``source``: :data:`BUNDLED_CORPUS`, :data:`GLYPH_CORPUS`, or a folder read as ``mode``
    (:data:`CORPUS_MODES`, crops by default). The record holds ``description`` (one human line),
    ``reader`` (the function and what it reads), ``mode``, ``crop_seed`` and ``size``. A mode for a
    generated or bundled corpus is a usage error: those are always read one way. A built-in name the user
    typed (``named_by_user``) that is also a folder here is ambiguous, and refused; a default is not.
    """
    from ..config import ConfigError

    source = str(source)
    if named_by_user and source in BUILT_IN_CORPORA and Path(source).exists():
        raise ConfigError(f"'{source}' names the {BUILT_IN_CORPORA[source]} and a folder here: write ./{source} "
                          "for the folder")
    if source in BUILT_IN_CORPORA and mode is not None:
        raise ConfigError(f"--corpus-mode applies to a corpus folder; '{source}' is always read one way")
    if source == BUNDLED_CORPUS:
        mode, images = "crops", bundled_corpus(count, seed=seed, size=size)
        description = "bundled photographs (crops) and LFW faces"
        reader = ("udp_datasets.evaluate.subjects.bundled_corpus: crops of the scikit-image and matplotlib "
                  "photographs of CORPUS_PHOTOS plus 1 in 20 scikit-image LFW faces")
    elif source == GLYPH_CORPUS:
        from .glyphs import glyph_corpus

        mode, images = "generated", glyph_corpus(count, seed, size)
        description = "generated glyphs (letters and digits)"
        reader = "udp_datasets.evaluate.glyphs.glyph_corpus: letters and digits in matplotlib's fonts"
    else:
        mode = mode or "crops"
        images = folder_corpus(source, count=count, seed=seed, size=size, mode=mode)
        description = f"folder {source}, read as {CORPUS_MODES[mode]} (--corpus-mode {mode})"
        reader = f"udp_datasets.evaluate.subjects.folder_corpus: {CORPUS_MODES[mode]}"
    return images, {"source": source, "description": description, "reader": reader, "mode": mode,
                    "crop_seed": seed, "size": size}


def folder_corpus(path: str | Path, count: int = 3000, seed: int = 0, size: int = SIZE,
                  mode: str = "crops") -> list[np.ndarray]:
    """A user's generic corpus: ``count`` log-uniform crops of the folder's images (see :func:`bundled_corpus`),
    or (``mode='whole'``) each image's central square at ``size``: all of them when the folder has at most
    ``count``, else a seeded random ``count`` of them in folder order (a whole image is never repeated)."""
    from .data import load_images

    if mode not in CORPUS_MODES:
        raise ValueError(f"corpus mode {mode!r}; choose from {', '.join(CORPUS_MODES)}")
    photos = [to_rgb(a) for a in load_images(str(path))]
    if not photos:
        raise ValueError(f"{path}: no images for a corpus")
    if mode == "crops":
        return log_uniform_crops(photos, count, np.random.default_rng(seed), size)
    if len(photos) > count:
        keep = np.sort(np.random.default_rng(seed).choice(len(photos), count, replace=False))
        photos = [photos[i] for i in keep]
    else:
        logger.info("%s: a whole-image corpus of all %d images (%d asked)", path, len(photos), count)
    return [square(a, size) for a in photos]
