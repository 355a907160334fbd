"""The less-trained victim of docs/efficacy.md ("Grey thin-stroke shapes"):

    OMP_NUM_THREADS=1 python docs/efficacy/structured_diagnostic_shapes/victim_02_recipe/victim_02_recipe.py DATA_DIR OUT CACHE_DIR

DATA_DIR: the folders written by ../make_shapes.py. Held-out check's victim proxy: landed 0.2's victim recipe (2,500 steps at a constant 3e-4, warm-up 100,
EMA 0.999) with per-channel latents, on the grey-shapes corpus; star, heart and spiral in one study;
noise / photoguard / advdm at seed 0 plus the controls. Rule fixed before the result: the question is only
whether a less-trained victim of 0.2's recipe lets the positive control pass (>= 0.8 at 16 and 32/255)."""
import logging
import sys
from dataclasses import replace
from udp_datasets.evaluate.experiments import fewshot as F
from udp_datasets.evaluate.subjects import folder_subject, folder_corpus
from udp_datasets.models.denoiser_training import TrainRecipe

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    D, out, cache = sys.argv[1], sys.argv[2], sys.argv[3]
    s = F.REDUCED
    pre = replace(s.pretrain, victim=TrainRecipe(steps=2500, learning_rate=3e-4, batch_size=32, warmup_steps=100,
                                                 cosine=False, ema=0.999))
    s = replace(s, pretrain=pre, subjects=("star", "heart", "spiral"), methods=("noise", "photoguard", "advdm"),
                purifications=(), sweep_levels=(), past_failed_controls=True, workers=2, seeds=(0,), modes=("full",))
    subjects = {n: folder_subject(f"{D}/{n}", 0.667, seed=0, size=64, kind="shape") for n in ("star", "heart", "spiral")}
    corpus = folder_corpus(f"{D}/corpus", s.pretrain.corpus_count, s.pretrain.corpus_seed, 64)
    report = F.run_fewshot(out, s, subjects, corpus, cache)
    print(report["verdict"])
