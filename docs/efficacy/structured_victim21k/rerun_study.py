"""The 64 px glyph study rerun on another pretrained victim, everything else identical.

Same protected sets (the surrogate is the same copy: ``continue_victim.py``), same judges (same VAE and data: the
0.3 study's ``classifier.pt`` with only its cache key's folder name rewritten), same fine-tune recipe, sampling
and seeds. The study code keys protected sets by the pretraining folder's name, so they are copied under the new
key first (they depend only on the clean images, the protection config and the surrogate, all unchanged).

    OMP_NUM_THREADS=1 python rerun_study.py NEW_FOLDER OLD_FOLDER OLD_OUT OUT METHODS SEEDS
    # e.g. ... CACHE/fewshot-pretrain-victim21k CACHE/fewshot-pretrain-05f81701e45d5a54 \
    #          OLD_STUDY structured_victim21k noise,photoguard,advdm 0
"""
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import torch

from udp_datasets.evaluate.experiments import fewshot, fewshot_setup
from udp_datasets.evaluate.glyphs import glyph_corpus
from udp_datasets.evaluate.subjects import any_subject

if __name__ == "__main__":
    folder, old_folder, old_out, out = (Path(a) for a in sys.argv[1:5])
    methods, seeds = tuple(sys.argv[5].split(",")), tuple(int(x) for x in sys.argv[6].split(","))
    s = replace(fewshot.FewshotSettings(), seeds=seeds, modes=("full",), methods=methods, purifications=(),
                sweep_levels=(), workers=1, threads=1, past_failed_controls=True)
    subjects = {n: any_subject(n, 0, s.size, s.n_train, s.n_heldout) for n in s.subjects}
    corpus = glyph_corpus(s.pretrain.corpus_count, s.pretrain.corpus_seed, s.size)
    fewshot_setup.pretrain_folder = lambda *a, **k: folder  # the study reads this folder, not the recipe's key
    new, old = (fewshot.Study(o, f, s, subjects, substitutes=corpus[-s.n_train:])
                for o, f in ((out, folder), (old_out, old_folder)))
    out.mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        src, dst = old.set_path(subject, "noise", 0).parent, new.set_path(subject, "noise", 0).parent
        dst.mkdir(parents=True, exist_ok=True)
        for f in src.iterdir():
            if f.is_file() and not (dst / f.name).exists():
                shutil.copy(f, dst / f.name)
    if not (out / "classifier.pt").exists():
        state = torch.load(old_out / "classifier.pt", weights_only=True)
        key = json.loads(state["key"])
        assert key["pretrained"] == str(old_folder), key
        state["key"] = json.dumps({**key, "pretrained": str(folder)})
        torch.save(state, out / "classifier.pt")
    report = fewshot.run_fewshot(out, s, subjects, corpus, "/unused", corpus_source="generated glyphs (letters and digits)")
    print(report["verdict"])
