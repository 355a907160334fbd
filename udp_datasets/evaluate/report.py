"""Reports a person can read: report.json, report.md, sample grids, loss curves, the card's block."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..sinks.atomic import write_bytes_atomic

COLUMNS = [("fd", "FD", "{:.3f}"), ("fd_ratio_vs_clean", "FD / clean", "{:.2f}x"),
           ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
           ("artifact_ratio", "HF energy ratio", "{:.2f}"), ("colour_noise_ratio", "colour noise ratio", "{:.2f}"),
           ("final_train_loss", "victim loss", "{:.4f}"),
           ("training_data_fd", "FD of its training images", "{:.3f}"),
           # latent victims only: the VAE round trip of its training images (a perfect latent victim)
           ("decoded_training_fd", "FD of D(E(its training images))", "{:.3f}"),
           ("vae_fd", "FD vs D(E(held-out))", "{:.3f}"), ("vae_fd_ratio_vs_clean", "(same) / clean", "{:.2f}x"),
           ("vae_recall", "recall vs D(E(held-out))", "{:.3f}"),
           ("sample_psnr_vs_clean_victim_db", "samples vs clean victim's, same seeds (dB)", "{:.2f}")]


def sample_grid(images: np.ndarray, rows: int = 4, cols: int = 4, cell: int = 48) -> Image.Image:
    """A rows x cols grid of (N, H, W, C) uint8 images, upscaled (nearest) to ``cell``."""
    tiles = []
    for i in range(rows * cols):
        a = images[i] if i < len(images) else np.zeros_like(images[0])
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).convert("RGB")
        tiles.append(np.asarray(img.resize((cell, cell), Image.Resampling.NEAREST)))
    grid = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
    return Image.fromarray(grid)


def side_by_side_grids(panels: dict[str, np.ndarray], path: Path, rows: int = 4, cols: int = 4,
                       cell: int = 48) -> Path:
    """One labelled grid per set, left to right (e.g. held-out real | clean victim | protected victim)."""
    grids = [(name, sample_grid(imgs, rows, cols, cell)) for name, imgs in panels.items()]
    gap, header = 8, 16
    width = sum(g.width for _, g in grids) + gap * (len(grids) - 1)
    canvas = Image.new("RGB", (width, grids[0][1].height + header), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for name, grid in grids:
        canvas.paste(grid, (x, header))
        draw.text((x + 2, 2), name[: grid.width // 6], fill="black")
        x += grid.width + gap
    canvas.save(path)
    return path


def label_lines(label: str, chars: int, max_lines: int) -> list[str]:
    """A row label in lines of at most ``chars`` characters, broken after ``:`` / ``=`` / ``+`` where it can be:
    a variant's name (``photoguard:engine=generator:generator=gen_shapes``) differs from its siblings only at its
    end, which one cut-off line hid (0.3.6 grids showed four rows labelled ``photoguard:engine=generat``). Past
    ``max_lines`` the last line ends in ``…``."""
    pieces = re.findall(r"[^:=+]*[:=+]?", label)
    lines: list[str] = [""]
    for piece in (p for p in pieces if p):
        while piece:
            room = chars - len(lines[-1])
            if len(piece) <= room:
                lines[-1] += piece
                piece = ""
            elif lines[-1]:
                lines.append("")
            else:
                lines[-1], piece = piece[:chars], piece[chars:]
                lines.append("")
    lines = [line for line in lines if line]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][: chars - 1] + "…"
    return lines


def labelled_rows(rows: Sequence[tuple[str, np.ndarray]], path: Path, cell: int = 64, label_width: int = 150) -> Path:
    """One row of images per label (e.g. held-out real | clean fine-tune | each protected fine-tune)."""
    width = label_width + cell * max(len(images) for _, images in rows)
    canvas = Image.new("RGB", (width, cell * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        lines = label_lines(label, label_width // 6, max(1, cell // 12))
        top = r * cell + cell // 2 - 6 * len(lines)
        for i, line in enumerate(lines):
            draw.text((4, top + 12 * i), line, fill="black")
        for c, a in enumerate(images):
            tile = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).convert("RGB")
            canvas.paste(tile.resize((cell, cell), Image.Resampling.NEAREST), (label_width + c * cell, r * cell))
    canvas.save(path)
    return path


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float], Sequence[float] | None]], path: Path,
              xlabel: str, ylabel: str, title: str, hline: float | None = None) -> Path:
    """Lines with optional error bars: ``{label: (x, y, yerr or None)}``; ``hline`` marks a goal."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y, err) in series.items():
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_plot(losses: dict[str, Sequence[float]], path: Path, window: int = 50) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, values in losses.items():
        v = np.asarray(values, dtype=float)
        if len(v) >= window:
            v = np.convolve(v, np.ones(window) / window, mode="valid")
        ax.plot(v, label=name, linewidth=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"denoising loss (moving average {window})")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    ax.set_title("victim training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def fmt(value: Any, pattern: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return pattern.format(value)


def results_table(victims: dict[str, dict[str, Any]]) -> str:
    """Markdown table of victim metrics, one row per training set (columns no row has are left out)."""
    columns = [c for c in COLUMNS if any(c[0] in scores for scores in victims.values())]
    head = "| training set | " + " | ".join(label for _, label, _ in columns) + " |"
    sep = "|---" * (len(columns) + 1) + "|"
    rows = [f"| {name} | " + " | ".join(fmt(scores.get(key), pat) for key, _, pat in columns) + " |"
            for name, scores in victims.items()]
    return "\n".join([head, sep, *rows])


def write_report(report: dict[str, Any], samples: dict[str, np.ndarray], losses: dict[str, Sequence[float]],
                 holdout: np.ndarray, out_dir: str | Path) -> dict[str, str]:
    """Write report.json, report.md, samples.png and loss_curves.png into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md"),
             "samples": str(out_dir / "samples.png"), "loss_curves": str(out_dir / "loss_curves.png")}
    panels = {"held-out real": holdout, **{f"victim: {k}": v for k, v in samples.items()}}
    side_by_side_grids(panels, Path(files["samples"]))
    loss_plot(losses, Path(files["loss_curves"]))
    report = write_report_json({**report, "files": files}, out_dir)
    Path(files["markdown"]).write_text(render_markdown(report))
    return files


def relative_to_folder(value: Any, root: Path) -> Any:
    """``value`` (a path, or dicts and lists of them) with each path under ``root`` written relative to it.

    Why: a report folder gets copied into docs, zipped or published beside a dataset; its links must
    resolve from wherever it lands, and it should not record this machine's directory layout. Paths
    outside ``root`` (a user's model, a shared cache) are kept as given; anything else is left alone."""
    if isinstance(value, Mapping):
        return {k: relative_to_folder(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_to_folder(v, root) for v in value]
    if not isinstance(value, (str, Path)):
        return value
    try:
        return Path(value).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(value)


def write_report_json(report: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Write ``out_dir/report.json`` with ``report["files"]`` relative to ``out_dir``; returns that report.

    The one writer of every evaluation's report.json (evaluate, evaluate-sd, the few-shot study)."""
    if "files" in report:
        report = {**report, "files": relative_to_folder(report["files"], out_dir)}
    write_bytes_atomic(out_dir / "report.json", json.dumps(report, indent=2, default=json_default).encode())
    return report


def render_markdown(report: dict[str, Any]) -> str:
    victims = report["victims"]
    cost = report.get("perturbation", {})
    ref = victims.get("reference", {}).get("clean_train_vs_holdout", {})
    lines = ["# Protection efficacy report", ""]
    lines += [f"Victims: `{report['settings']['victim']['architecture']}` trained "
              f"{report['settings']['victim']['train_steps']} steps at "
              f"{report['settings']['victim']['resolution']} px, seed {report['settings']['victim']['seed']}; "
              f"{report['settings']['num_samples']} DDIM samples each, scored against "
              f"{report['data']['holdout']} held-out clean images with the "
              f"`{report['settings']['feature']}` feature extractor.", ""]
    if report['settings']['feature'] == "fitted":
        lines += ["FD uses a feature extractor fitted on the clean training images only: it is not FID, "
                  "and numbers compare only within this report.", ""]
    lines += ["## Victims", "", results_table({k: v for k, v in victims.items() if k != "reference"}), ""]
    if ref:
        lines += [f"Reference: the clean training images themselves score FD {fmt(ref.get('fd'), '{:.3f}')} "
                  "against the held-out split (the floor a perfect victim could reach).", ""]
    for name, c in cost.items():
        lines.append(f"- perturbation `{name}`: PSNR {fmt(c.get('psnr_db'), '{:.2f}')} dB, "
                     f"SSIM {fmt(c.get('ssim'), '{:.4f}')}, max L-inf {c.get('linf_levels')} levels")
    lines += ["", "## Verdict", "", verdict(victims), "",
              "![samples](samples.png)", "", "![loss curves](loss_curves.png)", ""]
    return "\n".join(lines)


def card_markdown(report: dict[str, Any]) -> str:
    """The block a dataset card embeds verbatim: the verdict, the results table and what it measured.

    Stored in report.json as ``card_markdown`` by ``evaluate`` and ``evaluate-sd``, so the card
    (``publish/``) shows an evaluation without importing this package.
    """
    victims = report["victims"]
    lines = [verdict(victims), "", results_table({k: v for k, v in victims.items() if k != "reference"}), ""]
    victim = (report.get("settings") or {}).get("victim") or {}
    if victim:
        lines.append(f"Victim `{victim.get('architecture')}`, {victim.get('train_steps')} training steps at "
                     f"{victim.get('resolution')} px; FD / clean is the protected victim's Fréchet "
                     "distance over the clean-trained victim's (higher = better protection).")
    return "\n".join(lines)


def verdict(victims: dict[str, dict[str, Any]], goal: float = 3.0) -> str:
    """Plain words on whether any protected victim is clearly worse than the clean one."""
    rows = {k: v for k, v in victims.items() if k != "reference" and not k.startswith("clean")}
    if not rows:
        return "No protected set was evaluated."
    best = max(rows, key=lambda k: rows[k].get("fd_ratio_vs_clean", 0))
    ratio = rows[best].get("fd_ratio_vs_clean", float("nan"))
    if ratio >= goal:
        return (f"`{best}` raises the victim's FD {ratio:.2f}x over the clean-trained victim "
                f"(goal: {goal:.0f}x): protection measured as effective on this setup.")
    return (f"No protected set reaches the {goal:.0f}x goal: the strongest, `{best}`, raises the victim's FD "
            f"{ratio:.2f}x over the clean-trained victim. On this setup the protection is not shown to work.")


def run_versions() -> dict[str, str]:
    """Library and Python versions of this run, for report.json."""
    import platform

    from ..records.versions import library_versions

    return {**library_versions(), "python": platform.python_version()}


def json_default(obj: Any) -> Any:
    """``json.dumps(default=...)`` for numpy scalars and paths in a report."""
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
