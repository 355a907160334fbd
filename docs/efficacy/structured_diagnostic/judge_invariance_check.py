"""The judge-invariance check of docs/efficacy.md: does erasure come from the judge reading artifacts as absence?

    OMP_NUM_THREADS=1 python docs/efficacy/structured_diagnostic/judge_invariance_check.py STUDY_DIR PRETRAIN_DIR VICTIMS_DIR

STUDY_DIR: a finished `evaluate --regime fewshot --full` run on the glyph subjects; PRETRAIN_DIR: its
pretraining folder (`report.json` -> pretrained.folder); VICTIMS_DIR: its `victims/full-*` folder of the
600-step full fine-tunes. Rule fixed before any result: retrain the shape judge on the same clean images
with (a) the study's augmentation, (b) geometric augmentation only (no noise, no blur, no contrast flip),
(c) none; rescore the cached samples of every seed-0 victim; print one JSON line per judge (its held-out
validation and each set's erasure per subject). If (b) or (c) read PhotoGuard / AdvDM as erased while
noise stays low, erasure figures depend on what the judge is invariant to, not only on the samples.
Output of our run: `judge_invariance_check.jsonl` beside this script.
"""

import json
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
import numpy as np
import torch
import torch.nn.functional as Fn
from udp_datasets.evaluate.glyphs import glyph_corpus
from udp_datasets.evaluate.subjects import any_subject
from udp_datasets.evaluate.experiments import fewshot as F
from udp_datasets.evaluate.experiments.fewshot_setup import CLASSIFIER_CORPUS
from udp_datasets.evaluate.experiments.fewshot_tasks import victim_codec
from udp_datasets.evaluate.metrics import shape_judge as SJ
from udp_datasets.evaluate.metrics.subject import validate_classifier
from udp_datasets.evaluate.victims.fewshot import decode, encode, to_tensor

SETS = ["noise", "photoguard", "advdm", "advdm:timesteps=eudp", "udp", "eudp", "sds", "mist", "mist2",
        "photoguard_target", "photoguard@16", "photoguard@32", "photoguard_target@32", "photoguard_target@64", "substitute"]
orig = SJ.augment_shapes

def geometric_only(x, gen):
    n = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=gen)
    angle, scale = u(-math.pi / 12, math.pi / 12), u(0.85, 1.15)
    mirror = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * mirror, -sin, u(-0.15, 0.15)], 1), torch.stack([sin * mirror, cos, u(-0.15, 0.15)], 1)], 1)
    grid = Fn.affine_grid(theta, list(x.shape), align_corners=False)
    return Fn.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

VARIANTS = {"ours": orig, "geometric_only": geometric_only, "none": lambda x, gen: x}

if __name__ == "__main__":
    torch.set_num_threads(1)
    study_dir, pre, vdir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    s = replace(F.FewshotSettings(), seeds=(0,), modes=("full",), workers=1)
    subjects = {n: any_subject(n, 0, s.size, s.n_train, s.n_heldout) for n in s.subjects}
    corpus = glyph_corpus(s.pretrain.corpus_count, s.pretrain.corpus_seed, s.size)
    vae = victim_codec(str(pre))
    rt = lambda x: to_tensor(decode(vae, encode(vae, x)))
    n = min(CLASSIFIER_CORPUS, len(corpus) // 2)
    train_corpus, val_corpus = to_tensor(corpus[:n]), to_tensor(corpus[n:n + 300])
    subj_t = {k: to_tensor(v.judge or v.train) for k, v in subjects.items()}
    heldout = {k: to_tensor(v.heldout) for k, v in subjects.items()}
    never = torch.from_numpy(np.load(next(study_dir.glob("victims/never-shown-*")) / "s0.npz")["images"]).permute(0, 3, 1, 2).float() / 255
    folders = {p.name.split("-")[0]: p for p in vdir.iterdir()}
    def samples(subj, name):
        f = folders[subj] / f"{name}__s0.npz"
        return torch.from_numpy(np.load(f)["images"]).permute(0, 3, 1, 2).float() / 255 if f.exists() else None
    for variant, aug in VARIANTS.items():
        t = time.time()
        SJ.augment_shapes = aug
        judge = SJ.train_shape_judge(train_corpus, subj_t, rt, steps=s.judge_steps)
        val = validate_classifier(judge, val_corpus, heldout, rt)
        rows = {}
        for subj in subjects:
            sn = judge.score(never, subj); sc = judge.score(samples(subj, "clean"), subj)
            row = {"never": round(sn, 3), "clean": round(sc, 3)}
            for name in SETS:
                x = samples(subj, name)
                if x is not None:
                    row[name] = round((sc - judge.score(x, subj)) / (sc - sn), 2) if sc - sn > 0.05 else None
            rows[subj] = row
        print(json.dumps({"variant": variant, "validation": val, "erasure": rows, "s": round(time.time() - t)}), flush=True)
