"""The round-trip check of docs/efficacy.md ("The subject in the training latents"), tinted vs grey.

    OMP_NUM_THREADS=1 python docs/efficacy/structured_diagnostic/roundtrip_check.py STUDY_DIR PRETRAIN_DIR

STUDY_DIR: the folder of a finished `evaluate --regime fewshot --full` run on the glyph subjects (its judges
are loaded from there); PRETRAIN_DIR: its pretraining folder (`report.json` -> pretrained.folder). Protects
each subject's 12 training images, as the study tints them and as grey copies, with PhotoGuard / AdvDM at
8/255, PhotoGuard at 32/255 and the grey-target push at 32/255 through the study's surrogate, and prints the
shape judge's score of their TAEF2 round trips beside the clean ones' (one JSON line per subject and kind).
The study's report gives the tinted numbers as its "subject in the training latents" column; the grey
copies are what this script adds (does colour keep the subject?).
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch

from udp_datasets.evaluate.experiments import fewshot_tasks as T
from udp_datasets.evaluate.experiments.protected_sets import protect_arrays
from udp_datasets.evaluate.metrics.arrays import hwc_to_nchw
from udp_datasets.evaluate.victims.fewshot import decode, encode, to_tensor

from glyph_study import reopen  # beside this script

PLAN = [("photoguard", 8), ("advdm", 8), ("photoguard", 32), ("photoguard_target", 32)]

if __name__ == "__main__":
    torch.set_num_threads(1)
    study_dir, pretrained = Path(sys.argv[1]), Path(sys.argv[2])
    s, subjects, corpus, study, judge = reopen(study_dir, pretrained)
    vae = T.victim_codec(str(pretrained))
    target = str(study_dir / "targets" / "grey.png")

    def round_trip(images):
        return to_tensor(decode(vae, encode(vae, hwc_to_nchw(images))))

    for name, subject in subjects.items():
        tinted = list(subject.train)
        grey = [np.repeat(np.asarray(a, np.float32).mean(2, keepdims=True), 3, 2).round().astype(np.uint8)
                for a in tinted]
        for kind, images in (("tinted", tinted), ("grey", grey)):
            out = {"clean_raw": judge.shape.score(to_tensor(images), name), "clean": judge.shape.score(round_trip(images), name)}
            for method, levels in PLAN:
                cfg = T.method_config(method, str(pretrained / "surrogate"), levels, 0, target)
                fit_dir = study_dir / "roundtrip_check" / name / kind / f"{method}{levels}"
                protected = protect_arrays(images, cfg, fit_dir, progress=False, fit=False)
                out[f"{method}@{levels}"] = judge.shape.score(round_trip(protected), name)
            print(json.dumps({"subject": name, "images": kind,
                              "roundtrip_shape_score": {k: round(float(v), 3) for k, v in out.items()}}), flush=True)
