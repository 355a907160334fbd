"""Structured few-shot subjects, generated offline: glyphs whose identity is their *shape*.

Why: a subject made of crops of one photograph is a palette and a texture; an 8/255 perturbation
cannot change either, and a small latent model learns both from a few images whatever the
protection does (issue 17). Here a subject is one character drawn as a *shape*: every image of it
has its own font, size, position, rotation, stroke and colours, so a model that reproduces the
subject must have learned the shape, and the colours say nothing (subject and corpus images draw
them from one distribution: ink on paper).

- Fonts: the TrueType fonts that ship with matplotlib (DejaVu Sans / Sans Mono / Serif in four
  styles each, STIX General in four, Computer Modern roman, bold, sans, italic and typewriter):
  :data:`FONT_FILES`, each checked to draw every character it is used for.
- :data:`STRUCTURED_SUBJECTS`: the characters ``&``, ``#`` and ``%``; the **corpus** is drawn from
  :data:`CORPUS_CHARACTERS` (letters and digits), never a subject's character.
- Every image: a light, faintly tinted background with a faint linear gradient, the glyph in a darker
  tinted ink at least :data:`MIN_CONTRAST` below it in grey level, rendered at 4x and downsampled
  (anti-aliased).

Deterministic: the same (name, seed, size) gives the same arrays on every machine with the same
matplotlib fonts and Pillow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
              "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
              "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf",
              "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
              "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf")

STRUCTURED_SUBJECTS: dict[str, str] = {"ampersand": "&", "hash": "#", "percent": "%"}
"""Subject name -> its character."""

CORPUS_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
MIN_CONTRAST = 0.35
"""Smallest luminance difference (on [0, 1]) between a glyph and its background."""
OVERSAMPLE = 4


@dataclass(frozen=True)
class GlyphStyle:
    """How much one drawing of a glyph varies (fractions of the image side, degrees)."""

    height: tuple[float, float] = (0.45, 0.8)
    rotation: float = 25.0
    stroke: tuple[int, int] = (0, 3)
    """Extra stroke width, in pixels of the 4x render (0 = the font's own weight)."""


def font_folder() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_folder() / name), size)


@lru_cache(maxsize=None)
def fonts_for(char: str) -> tuple[str, ...]:
    """The fonts of :data:`FONT_FILES` that draw ``char`` as a real glyph (not empty, not the
    font's missing-glyph box)."""
    out = []
    for name in FONT_FILES:
        if not (font_folder() / name).is_file():
            continue
        font = _font(name, 64)
        box = font.getbbox(char)
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            continue
        if _mask(font, char).tobytes() == _mask(font, "\uffff").tobytes():
            continue  # drawn as the missing-glyph box
        out.append(name)
    if not out:
        raise RuntimeError(f"no matplotlib font draws {char!r}; is matplotlib installed with its fonts?")
    return tuple(out)


def _mask(font: ImageFont.FreeTypeFont, char: str, stroke: int = 0) -> Image.Image:
    box = font.getbbox(char, stroke_width=stroke)
    w, h = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    img = Image.new("L", (w + 2, h + 2), 0)
    ImageDraw.Draw(img).text((1 - box[0], 1 - box[1]), char, fill=255, font=font, stroke_width=stroke,
                             stroke_fill=255)
    return img


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paper and ink (RGB in [0, 1]): a light background and a darker glyph, at least MIN_CONTRAST apart
    in grey level, each with a faint random tint. Why not free colours: with random saturated colours
    the pretrained victim spent itself on colour and drew no shapes at all (measured, docs/efficacy.md);
    ink on paper keeps the variation where the subject is, in the shape."""
    paper = rng.uniform(0.6, 1.0)
    ink = rng.uniform(0.0, paper - MIN_CONTRAST)
    tint = lambda: rng.normal(0.0, 0.04, 3)  # noqa: E731
    return np.clip(paper + tint(), 0, 1), np.clip(ink + tint(), 0, 1)


def draw_glyph(char: str, rng: np.random.Generator, size: int = 64, style: GlyphStyle = GlyphStyle()) -> np.ndarray:
    """One (size, size, 3) uint8 drawing of ``char``: random font, size, rotation, stroke, position, colours."""
    big = size * OVERSAMPLE
    font_name = fonts_for(char)[int(rng.integers(len(fonts_for(char))))]
    height = rng.uniform(*style.height) * big
    stroke = int(rng.integers(style.stroke[0], style.stroke[1] + 1))
    mask = _mask(_font(font_name, 64), char)
    font_px = max(8, int(round(64 * height / mask.height)))
    glyph = _mask(_font(font_name, font_px), char, stroke)
    glyph = glyph.rotate(float(rng.uniform(-style.rotation, style.rotation)), resample=Image.Resampling.BICUBIC,
                         expand=True)
    if max(glyph.size) > big * 0.95:  # keep the whole glyph in the frame
        factor = big * 0.95 / max(glyph.size)
        glyph = glyph.resize((max(1, int(glyph.width * factor)), max(1, int(glyph.height * factor))),
                             Image.Resampling.BICUBIC)
    x = int(rng.integers(0, big - glyph.width + 1))
    y = int(rng.integers(0, big - glyph.height + 1))
    alpha = np.zeros((big, big), np.float64)
    alpha[y:y + glyph.height, x:x + glyph.width] = np.asarray(glyph, np.float64) / 255
    bg, fg = _colours(rng)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:big, 0:big] / big - 0.5
    gradient = (np.cos(angle) * xx + np.sin(angle) * yy)[..., None] * rng.uniform(0, 0.15)
    background = np.clip(bg + gradient, 0, 1)
    img = background * (1 - alpha[..., None]) + fg * alpha[..., None]
    out = Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.asarray(out.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def glyph_images(chars: str, count: int, seed: int, size: int = 64, style: GlyphStyle = GlyphStyle()) -> list[np.ndarray]:
    """``count`` drawings, the character of each drawn uniformly from ``chars``."""
    rng = np.random.default_rng(seed)
    return [draw_glyph(chars[int(rng.integers(len(chars)))], rng, size, style) for _ in range(count)]


def subject_seed(name: str, split: str, seed: int) -> int:
    """Disjoint random streams per subject, split and study seed (stable across Python runs)."""
    return 7919 * seed + 104729 * sum(map(ord, name)) + {"train": 1, "heldout": 2, "judge": 3}[split]


def glyph_corpus(count: int, seed: int = 0, size: int = 64) -> list[np.ndarray]:
    """The structured domain's pretraining corpus: letters and digits, never a subject's character."""
    assert not set(CORPUS_CHARACTERS) & set(STRUCTURED_SUBJECTS.values()), "a subject's character is never in the corpus"
    return glyph_images(CORPUS_CHARACTERS, count, 1_000_003 + seed, size)
