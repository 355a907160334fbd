"""``udp-datasets evaluate-sd``: LoRA DreamBooth victims of a Stable Diffusion on clean vs protected images.

One victim is fine-tuned on the clean and one on the protected subject images with the same
recipe and seed (:mod:`..victims.sd_lora_training`), each samples the same prompts with the same
generators (:mod:`..victims.sd_lora_sampling`), and both are scored against the clean images
with one fitted extractor. Writes report.json / report.md, a comparison grid and loss curves.
With ``judge="faces"`` each victim's samples also get Anti-DreamBooth's FDFR and ISM against the clean
subject images (:mod:`..metrics.faces`, the ``faces`` extra).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ...models.devices import resolve_device
from ..metrics.faces import FaceJudge, face_scores
from ..metrics.fidelity import perturbation_cost
from ..metrics.scorer import Scorer
from ..report import (card_markdown, fmt, loss_plot, relative_to_folder, results_table, run_versions, side_by_side_grids,
                      verdict, write_report_json)
from ..victims.sd_lora import (LORA_WEIGHT_NAME, DreamBoothError, DreamBoothSettings, ImageInput, load_subject_images,
                               peak_memory, reset_peak_memory, resolve_precision, training_view)
from ..victims.sd_lora_sampling import sample_lora_victim, sample_prompts
from ..victims.sd_lora_training import train_lora_victim
from .victim_runs import EvalSettings

logger = logging.getLogger(__name__)


def pairwise_perturbation_cost(clean: Sequence[np.ndarray], protected: Sequence[np.ndarray]) -> dict[str, float]:
    """PSNR / SSIM (means over images) and max L-inf of protected vs clean, at the images' own sizes.

    Each pair goes through :func:`..metrics.fidelity.perturbation_cost` separately, so images of different
    sizes work; a pair whose sizes differ is refused (the sets must be the same images in order).
    """
    if len(clean) != len(protected):
        raise DreamBoothError(f"--clean has {len(clean)} images but --protected has {len(protected)}; they must "
                              "be the same images in the same order")
    costs = []
    for i, (a, b) in enumerate(zip(clean, protected)):
        if a.shape != b.shape:
            raise DreamBoothError(f"image {i}: clean is {a.shape[1]}x{a.shape[0]} but protected is "
                                  f"{b.shape[1]}x{b.shape[0]}; pair the same images in the same order")
        costs.append(perturbation_cost([a], [b]))
    psnrs = [c["psnr_db"] for c in costs]
    return {"psnr_db": float(np.mean(psnrs)), "psnr_db_min": float(np.min(psnrs)),
            "ssim": float(np.mean([c["ssim"] for c in costs])),
            "linf_levels": int(max(c["linf_levels"] for c in costs))}


def score_victims(samples: dict[str, np.ndarray], training_sets: dict[str, list[np.ndarray]],
                  reference: list[np.ndarray], settings: DreamBoothSettings) -> tuple[dict[str, dict[str, float]],
                                                                                      dict[str, Any]]:
    """Score each victim's samples against the clean subject images (``reference``).

    The feature extractor is fitted on the clean images only. With 5-20 images the whitening has
    few samples, so unless ``feature_kwargs`` sets it, ``block_dim`` keeps about one feature per
    four images (at least one per block): FD is still noisy at these sizes and only the ratio
    between the two victims, scored by the same extractor, means anything.
    """
    kwargs = dict(settings.feature_kwargs)
    if settings.feature == "fitted" and "block_dim" not in kwargs:
        kwargs["block_dim"] = int(max(1, min(4, len(reference) // (4 * 13))))
    scorer = Scorer(reference, reference, EvalSettings(feature=settings.feature, feature_kwargs=kwargs,
                                                       seed=settings.seed))
    scores: dict[str, dict[str, float]] = {}
    for name, imgs in samples.items():
        s = scorer.score(list(imgs))
        # the victim's own training images: what a perfect copy of its training data would score
        s["training_data_fd"] = scorer.score(training_sets[name])["fd"]
        scores[name] = s
    base = scores["clean"]["fd"]
    for s in scores.values():
        s["fd_ratio_vs_clean"] = s["fd"] / base if base > 0 else math.inf
    info = {"feature": settings.feature, "feature_kwargs": kwargs, "reference_images": len(reference)}
    return scores, info


def evaluate_dreambooth(model: str, clean_images: ImageInput, protected_images: ImageInput, prompt: str,
                        out_dir: str | Path, settings: DreamBoothSettings | None = None,
                        progress: bool = True, judge: str | None = None) -> dict[str, Any]:
    """Train one LoRA victim on the clean and one on the protected images (same recipe and seed),
    sample both, score the samples against the clean images, and write the report.

    ``out_dir`` gets ``report.json``, ``report.md``, ``comparison.png`` (training images and both
    victims' samples side by side), ``loss_curves.png`` and ``victims/{clean,protected}/`` (LoRA
    weights, ``samples.png``, ``victim_training.json``). Returns the report dict.

    ``judge="faces"`` adds each victim's FDFR and ISM (``victims[name]["faces"]``); its models load
    before any training, so a missing extra fails at once (FaceMetricsUnavailable).
    """
    settings = settings or DreamBoothSettings()
    start = time.perf_counter()
    clean = load_subject_images(clean_images)
    protected = load_subject_images(protected_images)
    cost = pairwise_perturbation_cost(clean, protected)
    if len(clean) < 3:
        raise DreamBoothError(f"need at least 3 subject images to score the victims, got {len(clean)}")
    if settings.num_samples < 2:
        raise DreamBoothError("num_samples must be >= 2 (a Fréchet distance needs a covariance)")
    device = resolve_device(settings.device)
    mixed_precision, _ = resolve_precision(settings, device)  # refuse bad settings before any training
    face_judge = _face_judge(judge)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = settings.resolution
    views = {"clean": training_view(clean, size), "protected": training_view(protected, size)}
    prompts = sample_prompts(prompt, settings)
    victims, samples, losses = _train_and_sample(model, {"clean": clean, "protected": protected}, prompt, prompts,
                                                 out_dir, settings, device, progress)
    scores, feature_info = score_victims(samples, views, views["clean"], settings)
    for name in victims:
        victims[name] = {**scores[name], **victims[name]}
        if face_judge is not None:
            victims[name]["faces"] = face_scores(samples[name], views["clean"], face_judge)
    memory = {k: v for k, v in peak_memory(device).items() if k != "peak_mib"}
    report: dict[str, Any] = {
        "kind": "stable-diffusion-lora-dreambooth",
        "model": str(model), "prompt": prompt, "sample_prompts": sorted(set(prompts)),
        "settings": settings.to_dict(), "mixed_precision": mixed_precision,
        "data": {"images": len(clean), "resolution": size, "scored_against": "the clean subject images"},
        "perturbation": {"protected": cost}, "victims": victims, "scoring": feature_info,
        "memory": {**memory, "note": _memory_note(device)},
        "notes": [f"FD over {settings.num_samples} samples against {len(clean)} subject images is noisy: "
                  "only the ratio between the two victims, scored by the same extractor, is meaningful, and "
                  "a ratio near 1 is within noise.",
                  "Both victims draw identical timesteps and noise at every training step, so their "
                  "final losses compare directly."],
        "verdict": verdict(victims),
        **({"faces": _faces_info(face_judge)} if face_judge is not None else {}),
        "seconds": round(time.perf_counter() - start, 1),
        "versions": run_versions(),
    }
    report["card_markdown"] = card_markdown(report)
    _write_files(report, out_dir, views, samples, losses, n=min(len(clean), settings.num_samples),
                 window=max(1, min(50, settings.train_steps // 8)))
    logger.info("SD evaluation written to %s (%.0f s)", out_dir, report["seconds"])
    return report


def _face_judge(judge: str | None) -> FaceJudge | None:
    """The face judge for ``judge="faces"`` (models loaded now), None for no judge."""
    if judge in (None, "none"):
        return None
    if judge != "faces":
        raise DreamBoothError(f"judge {judge!r}: choose faces or none")
    return FaceJudge().load()


def _faces_info(judge: FaceJudge) -> dict[str, Any]:
    return {"judge": f"dlib ({judge.detector_name} detector, 5-point landmarks, ResNet identity model)",
            "scored_against": "the clean subject images at the training resolution",
            "note": "FDFR: share of samples with no detected face. ISM: mean cosine similarity of each "
                    "detected face's embedding to the mean clean-face embedding (Anti-DreamBooth's definition; "
                    "undetected faces count in FDFR, not ISM); identity distance: the mean Euclidean distance "
                    "to that mean embedding (dlib: under 0.6, the same person). The paper used RetinaFace and "
                    "ArcFace: the definitions match, the values do not compare across models. Protection shows "
                    "as a higher FDFR and a lower ISM than the clean-trained victim's."}


def _train_and_sample(model: str, training_sets: dict[str, list[np.ndarray]], prompt: str, prompts: list[str],
                      out_dir: Path, settings: DreamBoothSettings, device: torch.device, progress: bool
                      ) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], dict[str, list[float]]]:
    """One LoRA victim per training set, in order: trained, sampled, its samples saved (npz and grid)."""
    samples: dict[str, np.ndarray] = {}
    victims: dict[str, dict[str, Any]] = {}
    losses: dict[str, list[float]] = {}
    for name, imgs in training_sets.items():
        victim_start = time.perf_counter()
        victim_dir = out_dir / "victims" / name
        result = train_lora_victim(model, imgs, prompt, victim_dir, settings, desc=name, progress=progress)
        reset_peak_memory(device)
        samples[name] = sample_lora_victim(model, result.lora_dir, prompts, settings, progress=progress)
        sampling_memory = peak_memory(device)
        np.savez_compressed(victim_dir / "samples.npz", samples=samples[name])
        _grid({"samples": samples[name]}, victim_dir / "samples.png")
        losses[name] = result.loss_history
        victims[name] = {"final_train_loss": result.final_loss(), "trainable_parameters": result.trainable_parameters,
                         "train_seconds": round(result.seconds, 1),
                         "seconds": round(time.perf_counter() - victim_start, 1),
                         "peak_memory_train_mib": result.memory["peak_mib"],
                         "peak_memory_sample_mib": sampling_memory["peak_mib"],
                         "lora_weights": relative_to_folder(Path(result.lora_dir) / LORA_WEIGHT_NAME, out_dir)}
    return victims, samples, losses


def _write_files(report: dict[str, Any], out_dir: Path, views: dict[str, list[np.ndarray]],
                 samples: dict[str, np.ndarray], losses: dict[str, list[float]], n: int, window: int) -> None:
    """report.json, report.md, comparison.png and loss_curves.png; ``report`` gains ``files``."""
    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"),
             "comparison": str(out_dir / "comparison.png"), "loss_curves": str(out_dir / "loss_curves.png")}
    _grid({"training: clean": np.stack(views["clean"][:n]), "training: protected": np.stack(views["protected"][:n]),
           "victim: clean-trained": samples["clean"], "victim: protected-trained": samples["protected"]},
          Path(files["comparison"]))
    loss_plot(losses, Path(files["loss_curves"]), window=window)
    report.update(write_report_json({**report, "files": files}, out_dir))
    Path(files["markdown"]).write_text(render_markdown(report))


def _memory_note(device: torch.device) -> str:
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated, reset before each victim's training and sampling "
                "(tensors only; nvidia-smi shows more: the CUDA context and allocator cache)")
    return ("CPU run: peak RSS of the whole Python process (resource.ru_maxrss; it cannot be reset, so "
            "later numbers include earlier ones). Not a GPU memory measurement.")


def _grid(panels: dict[str, np.ndarray], path: Path, cell: int = 128) -> Path:
    """Side-by-side grids; large images are downscaled with a box filter first (nearest is ugly)."""
    from PIL import Image

    n = max(len(v) for v in panels.values())
    cols = min(4, n)
    rows = math.ceil(n / cols)
    small = {}
    for name, imgs in panels.items():
        small[name] = np.stack([np.asarray(Image.fromarray(a).resize((cell, cell), Image.Resampling.BOX))
                                if a.shape[0] != cell else a for a in imgs])
    return side_by_side_grids(small, path, rows=rows, cols=cols, cell=cell)


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown; every number comes from ``report`` (report.json), formatted once."""
    s = report["settings"]
    victims = report["victims"]
    cost = report["perturbation"]["protected"]
    mem = report["memory"]
    lines = ["# Stable Diffusion LoRA (DreamBooth-style) evaluation", "",
             f"Base model `{report['model']}`; LoRA rank {s['lora_rank']} on the UNet attention projections, "
             f"{s['train_steps']} steps at {s['resolution']} px, batch {s['batch_size']}, learning rate "
             f"{s['learning_rate']}, mixed precision `{report['mixed_precision']}`, seed {s['seed']}; instance "
             f"prompt \"{report['prompt']}\". Each victim trained on {report['data']['images']} images and drew "
             f"{s['num_samples']} samples (DDIM, {s['sample_steps']} steps, guidance {s['guidance_scale']}, "
             f"CPU generators seeded {s['seed']}..{s['seed'] + s['num_samples'] - 1}).", "",
             f"Scored against {report['scoring']['reference_images']} clean subject images with the "
             f"`{report['scoring']['feature']}` feature extractor ({report['scoring']['feature_kwargs']}).", ""]
    lines += [f"> {note}" for note in report["notes"]] + [""]
    if report["scoring"]["feature"] == "fitted":
        lines += ["FD uses a feature extractor fitted on the clean images only: it is not FID.", ""]
    lines += ["## Victims", "", results_table(victims), "",
              "| victim | trainable LoRA parameters | training s | peak memory, training (MiB) | "
              "peak memory, sampling (MiB) |", "|---|---|---|---|---|"]
    for name, v in victims.items():
        lines.append(f"| {name} | {v['trainable_parameters']} | {fmt(v['train_seconds'], '{:.1f}')} | "
                     f"{fmt(v['peak_memory_train_mib'], '{:.1f}')} | {fmt(v['peak_memory_sample_mib'], '{:.1f}')} |")
    lines += ["", f"Memory ({mem['device']}): {mem['note']}", "",
              f"- perturbation `protected`: PSNR {fmt(cost['psnr_db'], '{:.2f}')} dB (mean; min "
              f"{fmt(cost['psnr_db_min'], '{:.2f}')}), SSIM {fmt(cost['ssim'], '{:.4f}')}, "
              f"max L-inf {cost['linf_levels']} levels", "",
              *_faces_markdown(report),
              "## Verdict", "", report["verdict"], "",
              "![training images and samples](comparison.png)", "", "![loss curves](loss_curves.png)", ""]
    return "\n".join(lines)


def _faces_markdown(report: dict[str, Any]) -> list[str]:
    """The face metrics' section of report.md (nothing without ``--judge faces``)."""
    if "faces" not in report:
        return []
    lines = ["## Faces", "", f"Judge: {report['faces']['judge']}, against {report['faces']['scored_against']}.",
             "", "| victim | FDFR | ISM | identity distance | faces found | clean faces found |",
             "|---|---|---|---|---|---|"]
    for name, v in report["victims"].items():
        f = v["faces"]
        lines.append(f"| {name} | {fmt(f['fdfr'], '{:.3f}')} | {fmt(f['ism'], '{:.3f}')} | "
                     f"{fmt(f['identity_distance'], '{:.3f}')} | {f['faces_found']}/{f['count']} | "
                     f"{f['reference_faces']} |")
    return lines + ["", f"> {report['faces']['note']}", ""]
