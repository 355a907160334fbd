"""Does the *surrogate's* latent normalisation decide whether PhotoGuard / AdvDM erase? (docs/efficacy.md,
"The surrogate's latent normalisation")

    OMP_NUM_THREADS=1 python docs/efficacy/structured_diagnostic/surrogate_normalisation_check.py \
        STUDY_DIR PRETRAIN_DIR SCALAR_SURROGATE_DIR > surrogate_normalisation_check.jsonl

STUDY_DIR: a finished `evaluate --regime fewshot --full` glyph study (its judges, clean sets and clean / noise
victims are reused); PRETRAIN_DIR: its pretraining folder (per-channel victim); SCALAR_SURROGATE_DIR: the
`surrogate/` of a pretraining run with `--latent-norm scalar` on the same corpus (one scalar shift and scale
for all 32 TAEF2 channels, as every latent pair the product could make before 0.3).

Why: the held-out check of issue 17 fine-tuned a per-channel victim, but on landed 0.2 the product's pairs
were scalar-normalised, so its pushes were computed in scalar latent space. In per-channel space the
encoder term ||E(x + d) - E(x)||^2 weights channel c by 1 / std_c^2 (std_c 0.34-1.16 on the glyph corpus,
an 11x spread of weights); in scalar space every channel counts alike. This protects each subject's
training set through the scalar surrogate (seed 0), fine-tunes the study's victim on it, and prints one
JSON line per set: the shape judge on the sets' round trips, then erasure beside the study's own rows.
"""

import json
import sys
from pathlib import Path

from udp_datasets.evaluate.experiments import fewshot as F
from udp_datasets.evaluate.experiments.fewshot_scores import Scores
from udp_datasets.evaluate.experiments.fewshot_tasks import ProtectJob

from glyph_study import reopen  # beside this script

PLAN = [("photoguard", 8), ("photoguard", 16), ("photoguard", 32), ("advdm", 8)]
STUDY_ROWS = ["noise", "photoguard", "advdm", "photoguard@16", "photoguard@32"]

if __name__ == "__main__":
    study_dir, pretrained, scalar = (Path(a) for a in sys.argv[1:4])
    s, subjects, corpus, study, judge = reopen(study_dir, pretrained, workers=2)
    jobs, names = [], []
    for method, levels in PLAN:
        names.append(name := f"scalarsurr-{method}@{levels}")
        for subject in subjects:
            out = study.set_path(subject, name, 0)
            jobs.append(("protect", ProtectJob(
                clean=str(study.set_path(subject, "clean", 0)), method=method, levels=levels, seed=0,
                surrogate=str(scalar), target_image=str(study.out / "targets" / "grey.png"), out=str(out),
                fit_dir=str(study.out / "fits" / subject / study.set_key(subject) / out.stem),
                pretrained=str(pretrained), base=s.protection)))
    with F.TaskPool(s.workers, s.threads, False) as pool:
        pool.map(jobs, "protect")
        pool.map(F.victim_jobs(study, ["clean", "noise"] + names, ["full"], [0]), "victims")
    scores = Scores(study, judge)
    for name in names:
        print(json.dumps({"set": name, "subject_in_training_latents": {
            subj: round(scores.latent_score(subj, name, 0), 3) for subj in subjects}, "latent_shift": {
            subj: round(scores.protection(subj, name, 0)["latent_shift"], 2) for subj in subjects}}), flush=True)
    for name in STUDY_ROWS + names:
        print(json.dumps({"set": name, "erasure": {
            subj: round(scores.erasure(subj, name, "full", 0), 2) for subj in subjects}}), flush=True)
