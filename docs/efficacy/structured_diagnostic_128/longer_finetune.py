"""128 px glyph study with a 3x longer full fine-tune (1,800 steps instead of 600).

Why: at 128 px (16x16 TAEF2 latents) the committed 600-step fine-tune does not learn the glyphs (clean lift
0.08-0.19 < 0.20), so the positive control is undefined there. The study has no CLI flag for the fine-tune
recipe, so this script replaces it in ``FewshotSettings``. Run after the CLI command in docs/efficacy.md
with the same OUT and cache: it reuses the pretraining, the judge and the protected sets.

    OMP_NUM_THREADS=1 python longer_finetune.py OUT CACHE
"""
import json
import sys
from dataclasses import replace

from udp_datasets.evaluate.experiments import fewshot
from udp_datasets.evaluate.glyphs import glyph_corpus
from udp_datasets.evaluate.subjects import any_subject

if __name__ == "__main__":
    out, cache = sys.argv[1], sys.argv[2]
    base = fewshot.FewshotSettings()
    settings = replace(base, size=128, seeds=(0,), modes=("full",), methods=("noise", "photoguard"),
                       purifications=(), sweep_levels=(), workers=2, threads=1, victim_check_factor=1000.0,
                       full=replace(base.full, steps=1800))
    subjects = {n: any_subject(n, 0, settings.size, settings.n_train, settings.n_heldout) for n in settings.subjects}
    corpus = glyph_corpus(settings.pretrain.corpus_count, settings.pretrain.corpus_seed, settings.size)
    report = fewshot.run_fewshot(out, settings, subjects, corpus, cache,
                                 corpus_source="generated glyphs (letters and digits)")
    print(report["verdict"])
    print(json.dumps(report["controls"]["per_subject"], indent=1))
