"""Does the fine-tune's learning rate (or sampling from raw weights instead of the EMA) turn PhotoGuard's or AdvDM's
pushes into erasure? Another rate could make the fine-tune fit the pushed latents' large, out-of-distribution values and draw
them ("dark, noisy" samples, as in METHOD.md's held-out check) instead of the subject. Fine-tune the shapes21k
victim on the cached sets with the study's recipe at another learning rate (and, with --no-ema, sample the raw
weights), sample with the study's sampler, judge with the study's shape judge. (docs/efficacy.md, "The fine-tune's
learning rate")

    cd docs/efficacy/structured_diagnostic_shapes/victim21k
    OMP_NUM_THREADS=1 python finetune_lr_check.py STUDY/heart heart CACHE/fewshot-pretrain-348484d4564a7993 \
        clean,noise,photoguard,photoguard@32,advdm LR [--no-ema] [--seed N] [--ft-seed M] >> finetune_lr_check.jsonl

STUDY/heart is run.sh's study folder (its cached sets and shape judge). The glyph rows ran the same script on
the budget sweep's study (docs/efficacy/eudp_budget_sweep/run.sh) and the shipped glyph victim's folder:
    python finetune_lr_check.py SWEEP_STUDY hash SHIPPED_VICTIM clean,noise,advdm,photoguard@16,photoguard@32 3e-4
About 75 s per fine-tune at one torch thread."""
import json, sys, time
from dataclasses import replace
from pathlib import Path
import torch
from udp_datasets.evaluate.experiments.fewshot_tasks import victim_codec, victim_base, load_images
from udp_datasets.evaluate.victims.fewshot import finetune, latent_data, decode, to_tensor, sample
from udp_datasets.evaluate.experiments.fewshot import FewshotSettings
from udp_datasets.evaluate.metrics.shape_judge import ShapeJudge

torch.set_num_threads(1)
study, subject, pretrained = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
sets, lr, ema = sys.argv[4].split(","), float(sys.argv[5]), "--no-ema" not in sys.argv
flag = lambda name, default: int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default  # noqa: E731
seed = flag("--seed", 0)  # the protected sets' seed (the study's -sN files)
ft_seed = flag("--ft-seed", seed)  # the fine-tune's and the sampler's seed (the same for every set)
judge = ShapeJudge.from_state(torch.load(study / "classifier.pt", weights_only=True)["shape"])
vae, base = victim_codec(pretrained), victim_base(pretrained)
settings = FewshotSettings()
recipe = replace(settings.recipe("full"), learning_rate=lr, ema=settings.recipe("full").ema if ema else 0.0)
setdir = next((study / "sets" / subject).glob("*/"))

scores = {}
for name in ["never"] + sets:
    t0 = time.time()
    if name == "never":
        model = base
    else:
        path = setdir / f"{name}-s{seed}.npz" if name != "clean" else study / "sets" / subject / f"clean-{setdir.name}.npz"
        model, losses = finetune(base, latent_data(vae, load_images(path)), recipe, ft_seed)
    z = sample(model, 48, ft_seed, settings.sample_steps, settings.sample_eta)
    scores[name] = round(judge.score(to_tensor(decode(vae, z)), subject), 3)
    print(json.dumps({"subject": subject, "seed": seed, "ft_seed": ft_seed, "lr": lr, "ema": ema, "set": name, "score": scores[name], "s": round(time.time() - t0)}), flush=True)
c, n = scores["clean"], scores["never"]
erasure = {k: (round((c - v) / (c - n), 2) if c - n > 0.2 else None) for k, v in scores.items() if k not in ("never", "clean")}
print(json.dumps({"subject": subject, "seed": seed, "ft_seed": ft_seed, "lr": lr, "ema": ema, "lift": round(c - n, 2), "erasure": erasure}), flush=True)
