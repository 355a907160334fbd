"""Can an 8/255 push remove the glyph from TAEF2's round trips if it attacks the *decoded* image?
(docs/efficacy.md, "An attack on the decoded image")

    OMP_NUM_THREADS=1 python docs/efficacy/structured_diagnostic/decoded_attack_check.py \
        STUDY_DIR PRETRAIN_DIR > decoded_attack_check.jsonl

PhotoGuard maximises the latent distance ||E(x + d) - E(x)||^2; TAEF2's decoder maps most of that distance
back to the same glyph (the round trips keep the subject). This runs 40 signed PGD steps (step epsilon/4,
random start, 8-bit rounding each step) on each subject's 12 training images for both losses, the latent
one and the decoded one ||D(E(x + d)) - D(E(x))||^2, at 8 and 32/255, and prints the study's shape judge on
the round trips (what a victim trains on) with their PSNR against the clean round trips. It also saves
`decoded_attack_check.png` (hash: the round trips of each attack). A diagnostic loop written here, not the
product's PGD: it only asks whether the subject *can* leave the latents at this budget.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from udp_datasets.evaluate.victims.fewshot import to_tensor
from udp_datasets.models.tiny_autoencoder import bundled_taef2

from glyph_study import reopen  # beside this script

ATTACKS = [("latent", 8), ("latent", 32), ("decoded", 8), ("decoded", 32)]


def pgd(vae, x: torch.Tensor, eps: float, space: str, steps: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z0 = vae.encode(x * 2 - 1).latents
        r0 = vae.decode(z0).sample
    d = (torch.rand(x.shape, generator=g) * 2 - 1) * eps
    for _ in range(steps):
        d.requires_grad_(True)
        z = vae.encode((x + d).clamp(0, 1) * 2 - 1).latents
        loss = ((z - z0) ** 2).mean() if space == "latent" else ((vae.decode(z).sample - r0) ** 2).mean()
        grad, = torch.autograd.grad(loss, d)
        d = (d.detach() + eps / 4 * grad.sign()).clamp(-eps, eps)
        d = ((x + d).clamp(0, 1) * 255).round() / 255 - x
    return (x + d).clamp(0, 1)


if __name__ == "__main__":
    torch.set_num_threads(1)
    study_dir, pretrained = Path(sys.argv[1]), Path(sys.argv[2])
    s, subjects, corpus, study, judge = reopen(study_dir, pretrained)
    vae = bundled_taef2().eval().requires_grad_(False)

    def round_trip(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vae.decode(vae.encode(x * 2 - 1).latents).sample.add(1).div(2).clamp(0, 1)

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return round(float(10 * torch.log10(1 / ((a - b) ** 2).mean())), 1)

    rows = {}
    for name, subject in subjects.items():
        x = to_tensor(subject.train)
        clean = round_trip(x)
        out = {"clean": round(float(judge.shape.score(clean, name)), 3)}
        rows[name] = [clean[:8]]
        for space, levels in ATTACKS:
            r = round_trip(pgd(vae, x, levels / 255, space))
            out[f"{space}@{levels}"] = {"score": round(float(judge.shape.score(r, name)), 3), "round_trip_psnr_db": psnr(r, clean)}
            rows[name].append(r[:8])
        print(json.dumps({"subject": name, "shape_score_of_round_trips": out}), flush=True)
    grid = torch.cat([torch.cat(list(r), 2) for r in rows["hash"]], 1)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
        Path(__file__).with_suffix(".png"))
