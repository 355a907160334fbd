"""Continue the glyph study's pretrained 64 px victim for more steps (a warm restart), measure its victim check,
and save it as a pretraining cache folder beside the original.

Why: the 0.3 victim (6,000 steps) fails its own check (samples' FD 356, 33x the TAEF2 round trips' 10.8 where
10x is asked), and its loss was still falling. This asks whether it is simply under-trained. Two restarts
were run, each a cosine schedule from the previous EMA weights (batch 32, warm-up 100, EMA 0.999):

    OMP_NUM_THREADS=1 python continue_victim.py CACHE/fewshot-pretrain-05f81701e45d5a54 3000 3e-4 11 FIRST
    OMP_NUM_THREADS=1 python continue_victim.py FIRST 12000 3e-4 12 CACHE/fewshot-pretrain-victim21k

(6,000 + 3,000 + 12,000 = 21,000 steps). The corpus latents and the surrogate are copied unchanged, so every
protected set made against that surrogate stays valid (``rerun_study.py``).
"""
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from udp_datasets.evaluate.experiments.fewshot import FewshotSettings
from udp_datasets.evaluate.experiments.fewshot_setup import pretrained_quality
from udp_datasets.evaluate.glyphs import glyph_corpus
from udp_datasets.evaluate.victims.fewshot_pretrain import load_victim_unet
from udp_datasets.models.denoiser_training import TrainRecipe, normalised_latent_data, train_unet

if __name__ == "__main__":
    src, steps, lr, seed, dst = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    start = time.time()
    state = torch.load(src / "corpus.pt", weights_only=True)
    _, data = normalised_latent_data(state, True, state["raw"], state["raw_flip"])
    unet = load_victim_unet(src).requires_grad_(True)
    recipe = TrainRecipe(steps=steps, learning_rate=lr, batch_size=32, warmup_steps=100, cosine=True, ema=0.999)
    model, losses, _ = train_unet(unet, data, recipe, seed=seed, desc="continue")
    seconds = time.time() - start
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("corpus.pt", "surrogate_training.json"):
        shutil.copy(src / name, dst / name)
    for name in ("surrogate", "victim"):
        if not (dst / name).exists():
            shutil.copytree(src / name, dst / name)
    model.save_pretrained(dst / "victim" / "unet", safe_serialization=True)
    old = json.loads((src / "victim_training.json").read_text())
    history = old.get("restarts", []) + [{**recipe.to_dict(), "seed": seed, "seconds": seconds}]
    info = {"kind": "victim", "seconds": old["seconds"] + seconds, "final_loss": float(np.mean(losses[-100:])),
            "parameters": old["parameters"], "seed": old["seed"], "recipe": old["recipe"], "restarts": history,
            "loss_history": losses[::10]}
    (dst / "victim_training.json").write_text(json.dumps(info))
    settings = FewshotSettings()
    corpus = glyph_corpus(settings.pretrain.corpus_count, settings.pretrain.corpus_seed, settings.size)
    quality = pretrained_quality(dst, corpus, settings)
    (dst / "quality.json").write_text(json.dumps(quality))
    print(json.dumps({"seconds": seconds, "final_loss": info["final_loss"], **quality}))
