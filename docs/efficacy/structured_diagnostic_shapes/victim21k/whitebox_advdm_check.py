"""White-box AdvDM: the push computed through the victim's own pretrained UNet (the study's pushes go through
a separately pretrained surrogate UNet). Fine-tune the victim on the pushed set and judge it as the study does.
(docs/efficacy.md, "White-box AdvDM")

    for s in heart star spiral; do OMP_NUM_THREADS=1 python whitebox_advdm_check.py STUDY/$s $s \
        CACHE/fewshot-pretrain-348484d4564a7993 OUT_$s; done > whitebox_advdm_check.jsonl

STUDY/<subject> is run.sh's study folder (its clean set, shape judge and report); OUT_<subject> gets 8 samples
of each fine-tune as .npy (whitebox_advdm_samples.png: the 40-step AdvDM rows of heart, star, spiral).
About 80 s per method at one torch thread."""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from udp_datasets.evaluate.experiments.fewshot_tasks import (victim_codec, victim_base, load_images, method_config,
                                                             encode, hwc_to_nchw)
from udp_datasets.evaluate.experiments.protected_sets import protect_arrays
from udp_datasets.evaluate.victims.fewshot import finetune, latent_data, decode, to_tensor, sample
from udp_datasets.evaluate.experiments.fewshot import FewshotSettings
from udp_datasets.evaluate.metrics.shape_judge import ShapeJudge

torch.set_num_threads(1)
study, subject, pretrained, out = Path(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
out.mkdir(parents=True, exist_ok=True)
judge = ShapeJudge.from_state(torch.load(study / "classifier.pt", weights_only=True)["shape"])
report = json.loads((study / "report.json").read_text())
rows = {r["set"]: r["per_subject"][subject] for r in report["tables"]["full"]}
never = report["learned"][f"{subject}/full"]["never"]
clean_score = rows["clean"]["score"]
vae, base = victim_codec(pretrained), victim_base(pretrained)
s = FewshotSettings()
setdir = next((study / "sets" / subject).glob("*/"))
clean = load_images(study / "sets" / subject / f"clean-{setdir.name}.npz")
for method, steps in (("advdm", 40), ("advdm", 100), ("advdm:timesteps=eudp", 40)):
    t0 = time.time()
    cfg = method_config(method, str(Path(pretrained) / "victim"), 8, 0, "").replace(steps=steps)
    protected = protect_arrays(clean, cfg, out / "fit", progress=False, fit=False)
    a, b = hwc_to_nchw(clean), hwc_to_nchw(protected)
    shift = float((encode(vae, b) - encode(vae, a)).norm() / encode(vae, a).norm())
    model, _ = finetune(base, latent_data(vae, protected), s.recipe("full"), 0)
    x = to_tensor(decode(vae, sample(model, 48, 0, s.sample_steps, s.sample_eta)))
    score = judge.score(x, subject)
    np.save(out / f"{subject}_{method}_{steps}.npy", decode(vae, sample(model, 8, 0, s.sample_steps, s.sample_eta)))
    print(json.dumps({"subject": subject, "method": method + " (white-box: the victim's own UNet)", "steps": steps,
                      "latent_shift": round(shift, 2), "score": round(score, 3), "clean_score": round(clean_score, 3),
                      "never_score": round(never, 3), "erasure": round((clean_score - score) / (clean_score - never), 2), "grey_box_study_erasure": rows.get(method, {}).get("erasure"),
                      "s": round(time.time() - t0)}), flush=True)
