"""Per-sample scores of the two shape judges (warp, the deciding one; strong, the second) on the first 12 samples of
seed 0's victims: `python judge_sheet.py STUDY/classifier.pt STUDY/victims/full-KEY SUBJECT OUT.jpg SET,SET,...`
(heart_judges_seed0.jpg: the 2e-4 `heart` study; star_judges_seed0.jpg: the 2e-4 `star` study)."""
import sys, glob, numpy as np, torch
from PIL import Image, ImageDraw
from udp_datasets.evaluate.metrics.shape_judge import ShapeJudge
state = torch.load(sys.argv[1], weights_only=True); warp = ShapeJudge.from_state(state["shape"])
strong = ShapeJudge.from_state(state["shape_check"])
d, subject, out, names = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5].split(",")
rows, T, L = [], 96, 150
for name in names:
    a = np.load(sorted(glob.glob(f"{d}/*/{name}__s0.npz"))[0])["images"][:12]
    x = torch.from_numpy(a).float().permute(0, 3, 1, 2) / 255
    pw, ps = (j.proba(x)[:, j.names.index(subject)] for j in (warp, strong))
    label = Image.new("RGB", (L, T + 14), "white")
    ImageDraw.Draw(label).text((4, T // 2 - 6), f"{name}-ft\nmean warp {pw.mean():.2f}\nmean strong {ps.mean():.2f}", fill="black")
    tiles = [np.asarray(label)]
    for img, w, s in zip(a, pw, ps):
        tile = Image.new("RGB", (T, T + 14), "white")
        tile.paste(Image.fromarray(img).resize((T, T), Image.LANCZOS), (0, 0))
        ImageDraw.Draw(tile).text((2, T + 1), f"w {w:.2f}  s {s:.2f}", fill=(200, 0, 0))
        tiles.append(np.asarray(tile))
    rows.append(np.concatenate(tiles, 1))
Image.fromarray(np.concatenate(rows, 0)).save(out)
