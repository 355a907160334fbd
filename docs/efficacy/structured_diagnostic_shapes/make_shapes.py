"""The grey thin-stroke shapes of docs/efficacy.md ("Grey thin-stroke shapes"), written as image folders.

    python docs/efficacy/structured_diagnostic_shapes/make_shapes.py DATA_DIR

16 shape classes drawn with Pillow as 1-2.5 px outlines (at 4x, box-downsampled to 64 px), ink on a grey
paper with a faint gradient (both grey levels random, at least 0.35 apart), random size, position and
rotation: the kind of data METHOD.md's held-out check used (grey 64 px images of one shape class, a corpus
of other classes). Subjects `star`, `heart`, `spiral` (36 images each: 12 training, 24 held-out with
`--holdout-fraction 0.667`); `corpus`: 3,000 images of the 13 other classes. `classes.png`: 8 of each.
Then, per subject (one pretraining, cached, serves all three):

    udp-datasets evaluate --regime fewshot --subject DATA_DIR/star --corpus DATA_DIR/corpus --judge shape \
        --holdout-fraction 0.667 --seeds 0 --modes full --purifications none --sweep none \
        --methods photoguard,advdm --past-failed-controls --out star
"""

import math
import sys
from pathlib import Path
import numpy as np
from PIL import Image, ImageDraw

CLASSES = ["circle", "square", "triangle", "pentagon", "hexagon", "cross", "plus", "line", "arc", "ellipse",
           "star", "heart", "spiral", "arrow", "zigzag", "crescent"]

def _poly(n, r, rot, cx, cy):
    return [(cx + r * math.cos(rot + 2 * math.pi * k / n), cy + r * math.sin(rot + 2 * math.pi * k / n)) for k in range(n)]

def draw(cls, rng, size=64, stroke=(1.0, 2.5), grey=True):
    big = size * 4
    paper = rng.uniform(0.6, 1.0); ink = rng.uniform(0.0, paper - 0.35)
    img = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.22, 0.4) * big
    cx = rng.uniform(r + 4, big - r - 4); cy = rng.uniform(r + 4, big - r - 4)
    rot = rng.uniform(0, 2 * math.pi)
    w = int(round(rng.uniform(*stroke) * 4))
    if cls == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], outline=255, width=w)
    elif cls == "ellipse":
        a = r; b = r * rng.uniform(0.4, 0.65)
        pts = [(cx + a * math.cos(t) * math.cos(rot) - b * math.sin(t) * math.sin(rot),
                cy + a * math.cos(t) * math.sin(rot) + b * math.sin(t) * math.cos(rot)) for t in np.linspace(0, 2 * math.pi, 80)]
        d.line(pts + [pts[0]], fill=255, width=w, joint="curve")
    elif cls in ("square", "triangle", "pentagon", "hexagon"):
        n = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}[cls]
        pts = _poly(n, r, rot, cx, cy); d.line(pts + [pts[0]], fill=255, width=w, joint="curve")
    elif cls in ("cross", "plus"):
        off = 0 if cls == "plus" else math.pi / 4
        a = (rng.uniform(-0.2, 0.2) + off)
        for k in range(2):
            t = a + k * math.pi / 2
            d.line([(cx - r * math.cos(t), cy - r * math.sin(t)), (cx + r * math.cos(t), cy + r * math.sin(t))], fill=255, width=w)
    elif cls == "line":
        d.line([(cx - r * math.cos(rot), cy - r * math.sin(rot)), (cx + r * math.cos(rot), cy + r * math.sin(rot))], fill=255, width=w)
    elif cls == "arc":
        d.arc([cx - r, cy - r, cx + r, cy + r], math.degrees(rot), math.degrees(rot) + 180, fill=255, width=w)
    elif cls == "crescent":
        d.arc([cx - r, cy - r, cx + r, cy + r], math.degrees(rot) + 40, math.degrees(rot) + 320, fill=255, width=w)
        ox = cx + 0.45 * r * math.cos(rot); oy = cy + 0.45 * r * math.sin(rot)
        r2 = r * 0.75
        d.arc([ox - r2, oy - r2, ox + r2, oy + r2], math.degrees(rot) + 70, math.degrees(rot) + 290, fill=255, width=w)
    elif cls == "star":
        pts = []
        for k in range(10):
            rr = r if k % 2 == 0 else r * 0.42
            t = rot + math.pi * k / 5
            pts.append((cx + rr * math.cos(t), cy + rr * math.sin(t)))
        d.line(pts + [pts[0]], fill=255, width=w, joint="curve")
    elif cls == "heart":
        ts = np.linspace(0, 2 * math.pi, 120)
        xs = 16 * np.sin(ts) ** 3; ys = -(13 * np.cos(ts) - 5 * np.cos(2 * ts) - 2 * np.cos(3 * ts) - np.cos(4 * ts))
        s = r / 17; a = rng.uniform(-0.4, 0.4)
        pts = [(cx + s * (x * math.cos(a) - y * math.sin(a)), cy + s * (x * math.sin(a) + y * math.cos(a))) for x, y in zip(xs, ys)]
        d.line(pts, fill=255, width=w, joint="curve")
    elif cls == "spiral":
        ts = np.linspace(0, 4 * math.pi, 160)
        pts = [(cx + r * t / (4 * math.pi) * math.cos(t + rot), cy + r * t / (4 * math.pi) * math.sin(t + rot)) for t in ts]
        d.line(pts, fill=255, width=w, joint="curve")
    elif cls == "arrow":
        p0 = (cx - r * math.cos(rot), cy - r * math.sin(rot)); p1 = (cx + r * math.cos(rot), cy + r * math.sin(rot))
        d.line([p0, p1], fill=255, width=w)
        for s in (+1, -1):
            t = rot + math.pi + s * 0.5
            d.line([p1, (p1[0] + 0.5 * r * math.cos(t), p1[1] + 0.5 * r * math.sin(t))], fill=255, width=w)
    elif cls == "zigzag":
        n = 5; pts = []
        for k in range(n):
            u = -r + 2 * r * k / (n - 1); v = (0.35 * r) * (1 if k % 2 else -1)
            pts.append((cx + u * math.cos(rot) - v * math.sin(rot), cy + u * math.sin(rot) + v * math.cos(rot)))
        d.line(pts, fill=255, width=w, joint="curve")
    alpha = np.asarray(img, np.float64) / 255
    yy, xx = np.mgrid[0:big, 0:big] / big - 0.5
    ang = rng.uniform(0, 2 * math.pi)
    bg = np.clip(paper + (math.cos(ang) * xx + math.sin(ang) * yy) * rng.uniform(0, 0.15), 0, 1)
    out = bg * (1 - alpha) + ink * alpha
    out = Image.fromarray(np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    a = np.asarray(out)
    return np.repeat(a[..., None], 3, 2)

SUBJECTS = ["star", "heart", "spiral"]
CORPUS = [c for c in CLASSES if c not in SUBJECTS]

def images(classes, count, seed, size=64):
    rng = np.random.default_rng(seed)
    return [draw(classes[int(rng.integers(len(classes)))], rng, size) for _ in range(count)]

def save(folder: Path, arrays) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(arrays):
        Image.fromarray(a).save(folder / f"{i:05d}.png")


if __name__ == "__main__":
    root = Path(sys.argv[1])
    save(root / "corpus", images(CORPUS, 3000, 1000))
    for k, s in enumerate(SUBJECTS):
        save(root / s, images([s], 36, 2000 + k))
    rows = [np.concatenate(images([c], 8, i), 1) for i, c in enumerate(CLASSES)]
    Image.fromarray(np.concatenate(rows, 0)).save(root / "classes.png")
