"""The judge-invariance check of docs/efficacy.md: does erasure come from the judge reading artifacts as absence?

    OMP_NUM_THREADS=1 python docs/efficacy/structured_diagnostic/judge_invariance_check.py STUDY_DIR PRETRAIN_DIR VICTIMS_DIR [CORPUS_DIR]

STUDY_DIR: a finished `evaluate --regime fewshot` run (bundled glyphs or a `--subject FOLDER`); PRETRAIN_DIR: its
pretraining folder (`report.json` -> pretrained.folder); VICTIMS_DIR: its `victims/full-*` folder of the
600-step full fine-tunes; CORPUS_DIR: the `--corpus` folder of a `--subject FOLDER` study (the grey
shapes), omitted for the bundled glyphs. Rule fixed before any result: retrain the shape judge on the same clean images
with (a) the study's augmentation, (b) geometric augmentation only (no noise, no blur, no contrast flip),
(c) none; rescore the cached samples of every seed-0 victim; print one JSON line per judge (its held-out
validation and each set's erasure per subject). If (b) or (c) read PhotoGuard / AdvDM as erased while
noise stays low, erasure figures depend on what the judge is invariant to, not only on the samples.
Output of our runs: `judge_invariance_check.jsonl` beside this script (glyphs) and
`../structured_diagnostic_shapes/judge_invariance_check_*.jsonl` (shapes).
"""

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
import numpy as np
import torch
from udp_datasets.evaluate.glyphs import glyph_corpus
from udp_datasets.evaluate.subjects import any_subject, folder_corpus
from udp_datasets.evaluate.experiments import fewshot as F
from udp_datasets.evaluate.experiments.fewshot_setup import CLASSIFIER_CORPUS
from udp_datasets.evaluate.experiments.fewshot_tasks import victim_codec
from udp_datasets.evaluate.metrics import shape_judge as SJ
from udp_datasets.evaluate.metrics.subject import validate_classifier
from udp_datasets.evaluate.victims.fewshot import decode, encode, to_tensor

SETS = ["noise", "photoguard", "advdm", "advdm:timesteps=eudp", "udp", "eudp", "sds", "mist", "mist2",
        "photoguard_target", "photoguard@16", "photoguard@32", "photoguard_target@32", "photoguard_target@64", "substitute"]
orig = SJ.augment_shapes
VARIANTS = {"ours": orig, "geometric_only": SJ.warp_shapes, "none": lambda x, gen: x}


def load_npz(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.load(path)["images"]).permute(0, 3, 1, 2).float() / 255


def study_inputs(study_dir: Path, vdir: Path, corpus_folder: Path | None, s: F.FewshotSettings):
    """What the study's shape judge was trained and validated on: the corpus, each subject's judge images
    (bundled glyphs: their own judge images; a folder subject: its training images) and held-out images."""
    names = [p.name.rsplit("-", 1)[0] for p in sorted(vdir.iterdir())]
    if corpus_folder is None:
        corpus = glyph_corpus(s.pretrain.corpus_count, s.pretrain.corpus_seed, s.size)
        judge_images = {n: to_tensor(any_subject(n, 0, s.size, s.n_train, s.n_heldout).judge) for n in names}
    else:
        corpus = folder_corpus(corpus_folder, s.pretrain.corpus_count, s.pretrain.corpus_seed, s.size)
        judge_images = {n: load_npz(next((study_dir / "sets" / n).glob("clean-*.npz"))) for n in names}
    heldout = {n: load_npz(study_dir / "sets" / n / "heldout.npz") for n in names}
    return corpus, judge_images, heldout


if __name__ == "__main__":
    torch.set_num_threads(1)
    study_dir, pre, vdir = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    corpus_folder = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    s = replace(F.FewshotSettings(), seeds=(0,), modes=("full",), workers=1)
    corpus, judge_images, heldout = study_inputs(study_dir, vdir, corpus_folder, s)
    vae = victim_codec(str(pre))

    def round_trip(x: torch.Tensor) -> torch.Tensor:
        return to_tensor(decode(vae, encode(vae, x)))

    n = min(CLASSIFIER_CORPUS, len(corpus) // 2)
    train_corpus, val_corpus = to_tensor(corpus[:n]), to_tensor(corpus[n:n + 300])
    never = load_npz(next(study_dir.glob("victims/never-shown-*")) / "s0.npz")
    folders = {p.name.rsplit("-", 1)[0]: p for p in vdir.iterdir()}

    def samples(subject: str, name: str) -> torch.Tensor | None:
        f = folders[subject] / f"{name}__s0.npz"
        return load_npz(f) if f.exists() else None

    for variant, aug in VARIANTS.items():
        t = time.time()
        SJ.augment_shapes = aug
        judge = SJ.train_shape_judge(train_corpus, judge_images, round_trip, steps=s.judge_steps)
        val = validate_classifier(judge, val_corpus, heldout, round_trip)
        rows = {}
        for subject in judge_images:
            sn, sc = judge.score(never, subject), judge.score(samples(subject, "clean"), subject)
            row = {"never": round(sn, 3), "clean": round(sc, 3)}
            for name in SETS:
                x = samples(subject, name)
                if x is not None:
                    row[name] = round((sc - judge.score(x, subject)) / (sc - sn), 2) if sc - sn > 0.05 else None
            rows[subject] = row
        print(json.dumps({"variant": variant, "validation": val, "erasure": rows, "s": round(time.time() - t)}), flush=True)
