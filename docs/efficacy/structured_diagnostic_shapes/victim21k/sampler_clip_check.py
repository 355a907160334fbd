"""Does an x0-clipping sampler (diffusers' DDPM/DDIM default, clip_sample=True) turn PhotoGuard's pushes into
erasure? Fine-tune the shapes21k victim on cached sets, sample each with the study's sampler (no clip) and with
clip_sample ranges 1 and 2, judge with the study's shape judge. (docs/efficacy.md, "A sampler that clips x0")

    cd docs/efficacy/structured_diagnostic_shapes/victim21k
    OMP_NUM_THREADS=1 python sampler_clip_check.py STUDY/heart heart CACHE/fewshot-pretrain-348484d4564a7993 \
        clean,noise,photoguard,photoguard@32,advdm OUT > sampler_clip_check_heart.jsonl

STUDY/heart is run.sh's study folder (its cached sets and shape judge); OUT gets 8 decoded samples per set and
sampler as .npy. 90 s per fine-tune at one torch thread."""
import json, sys, time
from pathlib import Path
import numpy as np, torch
from udp_datasets.evaluate.experiments.fewshot_tasks import victim_codec, victim_base, load_images
from udp_datasets.evaluate.victims.fewshot import finetune, latent_data, decode, to_tensor
from udp_datasets.evaluate.experiments.fewshot import FewshotSettings
from udp_datasets.evaluate.metrics.shape_judge import ShapeJudge
from udp_datasets.models.latent import sd_scheduler

torch.set_num_threads(1)
study = Path(sys.argv[1]); subject = sys.argv[2]; pretrained = sys.argv[3]
sets = [s for s in sys.argv[4].split(",")]
state = torch.load(study / "classifier.pt", weights_only=True)
judge = ShapeJudge.from_state(state["shape"])
vae, base = victim_codec(pretrained), victim_base(pretrained)
recipe = FewshotSettings().recipe("full")
setdir = next((study / "sets" / subject).glob("*/"))

@torch.no_grad()
def sample(unet, count, seed, clip):
    from diffusers import DDIMScheduler
    cfg = dict(sd_scheduler().config)
    sch = DDIMScheduler.from_config(cfg, clip_sample=clip is not None, clip_sample_range=clip or 1.0)
    sch.set_timesteps(50)
    gen = torch.Generator().manual_seed(seed * 1_000_003)
    z = torch.randn((count, unet.config.in_channels, unet.config.sample_size, unet.config.sample_size), generator=gen)
    for t in sch.timesteps:
        z = sch.step(unet(z, t).sample, t, z, eta=1.0, generator=gen).prev_sample
    return z

out = {}
for name in ["never"] + sets:
    t0 = time.time()
    if name == "never":
        model = base
    else:
        path = setdir / f"{name}-s0.npz" if name != "clean" else study / "sets" / subject / f"clean-{setdir.name}.npz"
        data = latent_data(vae, load_images(path))
        model, _ = finetune(base, data, recipe, 0)
    row = {}
    for clip in (None, 2.0, 1.0):
        z = sample(model, 48, 0, clip)
        x = to_tensor(decode(vae, z))
        row[str(clip)] = round(judge.score(x, subject), 3)
        np.save(Path(sys.argv[5]) / f"{subject}_{name}_clip{clip}.npy", decode(vae, z[:8]))
    out[name] = row
    print(json.dumps({"set": name, "scores": row, "s": round(time.time() - t0)}), flush=True)
for clip in ("None", "2.0", "1.0"):
    c, n = out["clean"][clip], out["never"][clip]
    er = {k: (round((c - v[clip]) / (c - n), 2) if c - n > 0.2 else None) for k, v in out.items() if k not in ("never", "clean")}
    print(json.dumps({"clip": clip, "lift": round(c - n, 2), "erasure": er}), flush=True)
