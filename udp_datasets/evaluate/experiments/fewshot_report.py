"""The few-shot study's report: report.json (with ``card_markdown``), report.md, sample grids and plots.

Tables (markdown, also structured in report.json): the victims' learning check; per fine-tuning mode,
method x (erasure per subject, mean erasure, subject score, artifact score, FD, PSNR); the same after
each purification (erasure against the clean images purified the same way); the budget sweep; and
the issue's Goal tested in plain words.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..report import fmt, labelled_rows, line_plot, run_versions, write_report_json
from .fewshot_scores import GOAL_ARTIFACTS, GOAL_ERASURE, HARNESS_FAILED, Scores, followup_methods
from .fewshot_tasks import OURS, PEERS, load_images, set_name

GRID_IMAGES = 8


def pm(mean: float | None, sd: float | None, pattern: str = "{:.2f}") -> str:
    if mean is None:
        return "n/a"
    return fmt(mean, pattern) + (f" ± {fmt(sd, pattern)}" if sd is not None else "")


def seeds_mark(defined: int | None, seeds: int | None) -> str:
    """`` (1/3)`` after an erasure defined on fewer seeds than the study ran (a clean fine-tune learned too little
    on the others); nothing when it is defined on all."""
    return f" ({defined}/{seeds})" if defined is not None and seeds is not None and defined != seeds else ""


def ordered(names: Sequence[str]) -> list[str]:
    order = ["clean", "noise", *PEERS, *OURS]
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def method_table(scores: Scores, names: Sequence[str], mode: str, clean: str = "clean") -> tuple[str, list[dict]]:
    """Markdown rows: erasure per subject (mean ± sd over seeds), then means over subjects."""
    subjects = list(scores.study.subjects)
    kinds = list(scores.judge.scorers())
    head = ("| training set | " + " | ".join(f"erasure {s}" for s in subjects) + " | mean erasure | " +
            "".join(f"mean erasure ({k} judge) | " for k in kinds) + "subject score | "
            "artifact score (x real) | artifacts / clean-ft | FD vs held-out | PSNR (dB) | latent shift | "
            "subject in the training latents |")
    lines = [head, "|---" * (len(subjects) + 9 + len(kinds)) + "|"]
    rows = []
    for name in names:
        per = {s: scores.summary(s, name, mode, clean) for s in subjects}
        if not any(per.values()):
            continue
        mean = lambda key: float(np.mean([v[key] for v in per.values() if v.get(key) is not None])) \
            if any(v.get(key) is not None for v in per.values()) else None  # noqa: E731
        row = {"set": name, "mode": mode, "per_subject": per, **{k: mean(k) for k in (
            "erasure", "score", "artifact", "artifact_vs_clean", "fd", "psnr_db", "latent_shift", "latent_score",
            *(f"erasure_{kind}" for kind in kinds))}}
        rows.append(row)
        cells = [pm(per[s].get("erasure"), per[s].get("erasure_sd")) + seeds_mark(per[s].get("erasure_n"),
                                                                                 per[s].get("seeds"))
                 for s in subjects]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {fmt(row['erasure'], '{:.2f}')} | "
                     + "".join(f"{fmt(row[f'erasure_{kind}'], '{:.2f}')} | " for kind in kinds) +
                     f"{fmt(row['score'], '{:.3f}')} | {fmt(row['artifact'], '{:.2f}')} | "
                     f"{fmt(row['artifact_vs_clean'], '{:.2f}x')} | {fmt(row['fd'], '{:.1f}')} | "
                     f"{fmt(row['psnr_db'], '{:.2f}')} | {fmt(row['latent_shift'], '{:.2f}')} | "
                     f"{fmt(row['latent_score'], '{:.2f}')} |")
    return "\n".join(lines), rows


def learned_table(scores: Scores, modes: Sequence[str]) -> tuple[str, dict[str, Any]]:
    lines = ["| subject | mode | never-shown score | clean-ft score | lift per seed | learned (lift >= "
             f"{scores.learned(next(iter(scores.study.subjects)), modes[0])['min_lift']:.2f} on every seed) |",
             "|---|---|---|---|---|---|"]
    out: dict[str, Any] = {}
    for subject in scores.study.subjects:
        for mode in modes:
            r = scores.learned(subject, mode)
            out[f"{subject}/{mode}"] = r
            lifts = ", ".join(fmt(x["lift"], "{:.2f}") for x in r["seeds"])
            lines.append(f"| {subject} | {mode} | {fmt(r['never'], '{:.3f}')} | {fmt(r['clean'], '{:.3f}')} | {lifts} | "
                         f"{'yes' if r['all_learned'] else '**no**: erasure is not defined where the lift is short'} |")
    return "\n".join(lines), out


def purification_table(scores: Scores, names: Sequence[str], purifications: Sequence[str]) -> tuple[str, list[dict]]:
    """Markdown rows per purification and set. An erasure is its mean ± sd over seeds (each averaged over subjects,
    as the budget sweep's); the kept share is the ratio of the mean erasures, after over before, so it has no sd."""
    check = next((c for c in (scores.judge.check_for(s) for s in scores.study.subjects) if c), None)
    lines = ["| purification | set | subject score | erasure vs clean-ft (± sd over seeds) | erasure vs "
             "purified-clean-ft (± sd over seeds) | kept share of erasure (ratio of means) | "
             "artifacts / purified-clean-ft |" + (f" erasure vs purified-clean-ft by `{check}` |" if check else ""),
             "|---" * (8 if check else 7) + "|"]
    rows = []
    for pur in purifications:
        for name in names:
            key = f"{name}+{pur}"
            per = {s: (scores.summary(s, key, "full"), scores.summary(s, key, "full", clean=f"clean+{pur}"))
                   for s in scores.study.subjects}
            if not any(a for a, _ in per.values()):
                continue
            avg = lambda vals: float(np.mean(vals)) if vals else None  # noqa: E731
            over = lambda which, key: avg([p[which][key] for p in per.values()  # noqa: E731
                                           if p[which].get(key) is not None])
            kept = [scores.kept_after(s, name, pur) for s in scores.study.subjects] if name != "clean" else []
            row = {"purification": pur, "set": name, "score": over(0, "score"),
                   "erasure_vs_clean": over(0, "erasure"), "erasure_vs_clean_sd": over(0, "erasure_sd"),
                   "erasure": over(1, "erasure"), "erasure_sd": over(1, "erasure_sd"),
                   "kept": avg([k for k in kept if k is not None]),
                   "artifact_vs_clean": over(1, "artifact_vs_clean"),
                   **({"erasure_check": over(1, f"erasure_{check}"), "check_judge": check} if check else {})}
            # seeds with an erasure, where a purified clean fine-tune learned too little on some (as the main table)
            defined = [(b["erasure_n"], b["seeds"]) for _, b in per.values()
                       if b.get("erasure_n") is not None and b.get("seeds") is not None]
            row["erasure_seeds"] = min(defined) if defined else None
            rows.append(row)
            same = "—" if name == "clean" else pm(row["erasure"], row["erasure_sd"]) + seeds_mark(
                *(row["erasure_seeds"] or (None, None)))
            lines.append(f"| {pur} | {name} | {fmt(row['score'], '{:.3f}')} | "
                         f"{pm(row['erasure_vs_clean'], row['erasure_vs_clean_sd'])} | "
                         f"{same} | {fmt(row['kept'], '{:.2f}')} | {fmt(row['artifact_vs_clean'], '{:.2f}x')} |"
                         + ("" if not check else " — |" if name == "clean" else f" {fmt(row['erasure_check'], '{:.2f}')} |"))
    return "\n".join(lines), rows


def sweep_table(scores: Scores, names: Sequence[str], levels: Sequence[int]) -> tuple[str, list[dict]]:
    study_levels = scores.study.settings.levels
    lines = ["| epsilon | set | mean erasure (± sd over seeds, mean over subjects) | artifacts / clean-ft | PSNR (dB) |",
             "|---|---|---|---|---|"]
    rows = []
    for lv in sorted({*levels, study_levels}):
        for name in names:
            per = [scores.summary(s, set_name(name, lv, study_levels), "full") for s in scores.study.subjects]
            per = [p for p in per if p]
            if not per:
                continue
            vals = lambda k: [p[k] for p in per if p.get(k) is not None]  # noqa: E731
            row = {"levels": lv, "set": name, "erasure": float(np.mean(vals("erasure"))) if vals("erasure") else None,
                   "erasure_sd": float(np.mean(vals("erasure_sd"))) if vals("erasure_sd") else None,
                   "artifact_vs_clean": float(np.mean(vals("artifact_vs_clean"))) if vals("artifact_vs_clean") else None,
                   "psnr_db": float(np.mean(vals("psnr_db"))) if vals("psnr_db") else None}
            rows.append(row)
            lines.append(f"| {lv}/255 | {name} | {pm(row['erasure'], row['erasure_sd'])} | "
                         f"{fmt(row['artifact_vs_clean'], '{:.2f}x')} | {fmt(row['psnr_db'], '{:.2f}')} |")
    return "\n".join(lines), rows


def goal_text(goal: dict[str, Any]) -> str:
    """The issue's Goal in plain words."""
    if not goal.get("method"):
        return "No protection method was measured."
    best, peer = goal["method"], goal.get("peer")
    parts = []
    for subject, g in goal["per_subject"].items():
        parts.append(f"{subject}: erasure {pm(g['erasure'], g['erasure_sd'])} (noise {pm(g['noise_erasure'], g['noise_erasure_sd'])}"
                     + (f", {peer} {fmt(g['peer_erasure'], '{:.2f}')}" if peer else "") + ")"
                     + (f", by `{g['check_judge']}` {pm(g.get('check_erasure'), g.get('check_erasure_sd'))}" if g.get("check_judge") else "")
                     + f", artifacts {fmt(g['artifact_vs_clean'], '{:.2f}x')} "
                     "clean-ft, kept after " + ", ".join(f"{p} {fmt(v, '{:.2f}')}" for p, v in g["kept_after"].items()))
    yes = lambda flag, why="needs 2+ seeds": f"not measured ({why})" if flag is None else ("yes" if flag else "**no**")  # noqa: E731
    other = f"`{peer}`" if peer else "the other side"
    return "\n".join([
        f"Best method: `{best}`; compared with " + (f"{other} (the best of the other side: ours vs the peers)" if peer
                                                    else "no method: the study has none of the other side (ours vs "
                                                         "the peers)") + "; full fine-tuning, the study's budget.", "",
        f"- erasure >= {GOAL_ERASURE} or artifacts >= {GOAL_ARTIFACTS:.0f}x the clean fine-tune on every subject: "
        f"{yes(goal['reaches_goal_on_every_subject'])}" + ("" if not goal['reaches_goal_on_every_subject'] else
        " (by erasure)" if goal.get("by_erasure_on_every_subject") else " (**by artifacts** on some subject)"),
        f"- beats random noise of the same budget by more than the seed spread (on erasure, or on the artifacts "
        f"where they alone reached the goal) on every subject: "
        f"{yes(goal['beats_noise_on_every_subject'])}",
        f"- at least as strong as {other} on every subject: "
        f"{yes(goal['at_least_peer_on_every_subject'], 'an erasure was undefined' if peer else 'nothing to compare with')}",
        f"- keeps at least half its erasure after JPEG 75 and Gaussian noise 0.05: "
        f"{yes(goal['keeps_half_after_jpeg_and_noise'], 'purifications not run, or erasure undefined or <= 0')}",
        f"- erases >= {GOAL_ERASURE} by the second shape judge too, where erasure reached the goal: "
        f"{yes(goal.get('holds_under_check_judge'), 'no second shape judge, or the goal was not reached by erasure')}", "",
        *[f"  - {p}" for p in parts]])


def controls_text(controls: dict[str, Any]) -> str:
    """The controls as a markdown table and the gate's outcome, for the top of the report."""
    th = controls["thresholds"]
    q = controls.get("victim_quality") or {}
    flag = lambda v: "not run" if v is None else ("pass" if v else "**FAIL**")  # noqa: E731
    lines = [f"- pretrained victim learned its corpus (samples' FD {fmt(q.get('samples_fd'), '{:.1f}')} <= "
             f"{th['victim_fd_factor']:.0f} x a corpus split's through the VAE, "
             f"{fmt(q.get('round_trip_fd'), '{:.1f}')}; the raw split's {fmt(q.get('corpus_split_fd'), '{:.1f}')}): "
             f"{flag(controls['victim_learned_corpus'])}"
             + (f" (**the factor was changed from its default {th['victim_fd_factor_default']:.0f}**)"
                if th["victim_fd_factor"] != th["victim_fd_factor_default"] else ""), "",
             "| subject | clean fine-tune learned (lift >= " + f"{th['min_lift']:.2f}) | " +
             " | ".join(f"positive: photoguard {lv}/255 erasure (>= {th['positive_min']})" for lv in th["positive_levels"]) +
             f" | substitution erasure (>= {th['substitution_min']}) | negative: noise erasure (< {th['negative_max']}) |",
             "|---" * (4 + len(th["positive_levels"])) + "|"]
    for subject, c in controls["per_subject"].items():
        # each level marked on its own: the control passes only if every level does (one flag after the last
        # column read as that level's verdict, e.g. "0.87 (FAIL)" when 32/255 passed and 16/255 failed)
        pos = " | ".join(f"{fmt(v, '{:.2f}')} ({flag(None if v is None else v >= th['positive_min'])})"
                         for v in (c["positive"].get(str(lv)) for lv in th["positive_levels"]))
        lines.append(f"| {subject} | {flag(c['learned'])} | {pos} | "
                     f"{fmt(c['substitution'], '{:.2f}')} ({flag(c['substitution_passed'])}) | "
                     f"{fmt(c['negative'], '{:.2f}')} ({flag(c['negative_passed'])}) |")
    checks = [f"{subject}: " + " / ".join(fmt(c["positive_check"].get(str(lv)), '{:.2f}') for lv in th["positive_levels"])
              + f" by `{c['check_judge']}`" for subject, c in controls["per_subject"].items() if c.get("positive_check")]
    if checks:
        lines += ["", "The positive control by the second shape judge (not a gate; a protection must hold under both "
                  "judges to be shown): " + "; ".join(checks) + "."]
    lines += ["", "The subject's judge on the victim VAE's round trips of the training sets (the latents a victim "
              "trains on; the positive control can only erase what it removes from them):", "",
              "| subject | clean | " + " | ".join(f"photoguard {lv}/255" for lv in th["positive_levels"]) + " |",
              "|---" * (2 + len(th["positive_levels"])) + "|"]
    for subject, c in controls["per_subject"].items():
        latent = c.get("positive_latent_score") or {}
        lines.append(f"| {subject} | {fmt(latent.get('clean'), '{:.2f}')} | "
                     + " | ".join(fmt(latent.get(str(lv)), '{:.2f}') for lv in th["positive_levels"]) + " |")
    return "\n".join(lines)


def harness_verdict(controls: dict[str, Any], goal: dict[str, Any]) -> str:
    """The verdict, but only once the harness has passed its controls: a failed control replaces it."""
    if controls["passed"] is False:
        return (f"**{HARNESS_FAILED[0].upper()}{HARNESS_FAILED[1:]}.** A control failed (table below); "
                "no verdict is given.")
    if controls["passed"] is None:
        return "The controls have not all run yet; no verdict is given until they pass."
    return verdict(goal)


def shown_effective(goal: dict[str, Any]) -> bool:
    """Whether a report may say protection works: the goal reached *by erasure* on every subject, beyond random
    noise by more than the seed spread, not lost to JPEG 75 or Gaussian noise where those were measured, and seen
    by the second shape judge too where a subject has one (0.3.8). The one place this is decided, for a study's
    verdict and for the sweep over the attacker's rate."""
    return bool(goal.get("method") and goal.get("reaches_goal_on_every_subject")
                and goal.get("beats_noise_on_every_subject") and goal.get("by_erasure_on_every_subject")
                and goal.get("keeps_half_after_jpeg_and_noise") is not False
                and goal.get("holds_under_check_judge") is not False)


def verdict(goal: dict[str, Any]) -> str:
    method = goal.get("method")
    if not method:
        return "No protection method was measured."
    reached, beats = goal["reaches_goal_on_every_subject"], goal["beats_noise_on_every_subject"]
    if shown_effective(goal):
        unmeasured = ("" if goal.get("keeps_half_after_jpeg_and_noise") else
                      " Its robustness to JPEG 75 and Gaussian noise 0.05 is not measured (--purifications "
                      "jpeg75,noise0.05).")
        return (f"`{method}` erases >= {GOAL_ERASURE} on every subject and beats random noise by more than the "
                f"seed spread: protection measured as effective in this few-shot regime.{unmeasured}")
    if reached and beats and goal.get("by_erasure_on_every_subject") and goal.get("holds_under_check_judge") is False:
        per = "; ".join(f"{s}: {fmt(g.get('erasure'), '{:.2f}')} by `shape`, {pm(g.get('check_erasure'), g.get('check_erasure_sd'))} "
                        f"by `{g.get('check_judge')}` (noise {fmt(g.get('check_noise_erasure'), '{:.2f}')})"
                        for s, g in goal.get("per_subject", {}).items() if g.get("holds_under_check_judge") is False)
        return (f"`{method}` erases >= {GOAL_ERASURE} by the deciding shape judge, but not by the second one, trained "
                f"on the same clean images with other augmentations and as accurate on held-out images ({per}): the "
                "figure depends on the judge's strictness, so the protection is not shown to work. Look at the grids.")
    if reached and beats and not goal.get("by_erasure_on_every_subject"):
        per = "; ".join(f"{s}: {fmt(g.get('artifact_vs_clean'), '{:.2f}x')} (noise "
                        f"{fmt(g.get('noise_artifact_vs_clean'), '{:.2f}x')}), erasure {fmt(g.get('erasure'), '{:.2f}')}"
                        for s, g in goal.get("per_subject", {}).items() if g.get("reached_by") == "artifacts")
        return (f"`{method}` reaches the goal only by its artifacts where it does not erase >= {GOAL_ERASURE} "
                f"({per}; artifacts against the clean fine-tune's): the fine-tunes still learn the subject, with "
                "more artifacts than noise leaves. That is not counted as protection shown; issue 12 counts "
                "artifacts only where they are plainly visible, so look at the grids.")
    if reached and beats:
        return (f"`{method}` erases >= {GOAL_ERASURE} on every subject and beats random noise by more than the seed "
                "spread, but keeps less than half of its erasure after JPEG 75 or Gaussian noise 0.05: not robust "
                "to purification, so the protection is not shown to work.")
    if reached and beats is None:
        return (f"`{method}` reaches the erasure / artifact goal on every subject, but with one seed the "
                "seed spread is unknown, so beating random noise is not shown: run 3 or more seeds (--seeds 0,1,2).")
    return (f"The goal is not reached: the best method, `{method}`, does not both reach erasure >= "
            f"{GOAL_ERASURE} (or {GOAL_ARTIFACTS:.0f}x artifacts) and beat random noise by more than the seed "
            "spread on every subject. On this setup the protection is not shown to work.")


def grids(scores: Scores, names: Sequence[str], out: Path, modes: Sequence[str]) -> dict[str, str]:
    """Per subject and mode: held-out real, never-shown, clean-ft, each method-ft (seed 0); and the
    protected training images with their perturbation x8."""
    study, seed, files = scores.study, scores.study.settings.seeds[0], {}
    (out / "grids").mkdir(parents=True, exist_ok=True)
    for subject in study.subjects:
        held = load_images(study.out / "sets" / subject / "heldout.npz")[:GRID_IMAGES]
        for mode in modes:
            rows = [("held-out real", held)]
            if study.never_path(seed).exists():  # not yet when the victim check stopped the study
                rows.append(("never shown", load_images(study.never_path(seed))[:GRID_IMAGES]))
            for name in names:
                path = study.victim_path(subject, name, mode, seed)
                if path.exists():
                    rows.append((f"{name}-ft", load_images(path)[:GRID_IMAGES]))
            files[f"{subject}_{mode}"] = str(labelled_rows(rows, out / "grids" / f"samples_{subject}_{mode}.png"))
        clean = load_images(study.set_path(subject, "clean", seed))[:4]
        rows = [("clean training", clean)]
        for name in names:
            path = study.set_path(subject, name, seed)
            if name != "clean" and path.exists():
                prot = load_images(path)[:4]
                diff = [np.clip((p.astype(np.int16) - c.astype(np.int16)) * 8 + 128, 0, 255).astype(np.uint8)
                        for p, c in zip(prot, clean)]
                rows.append((name, prot + diff))
        files[f"{subject}_protected"] = str(labelled_rows(rows, out / "grids" / f"protected_{subject}.png"))
    return files


def quality_grid(pretrain: dict[str, Any], out: Path) -> str | None:
    path = Path(pretrain["folder"]) / "quality_samples.npz"
    if not path.exists():
        return None
    samples = load_images(path)
    rows = [(f"samples {i // 12 + 1}", samples[i:i + 12]) for i in range(0, min(len(samples), 36), 12)]
    (out / "grids").mkdir(parents=True, exist_ok=True)
    return str(labelled_rows(rows, out / "grids" / "pretrained_samples.png"))


def sweep_plot(rows: list[dict], out: Path) -> str | None:
    series: dict[str, tuple[list, list, list]] = {}
    for r in rows:
        if r["erasure"] is not None:
            x, y, e = series.setdefault(r["set"], ([], [], []))
            x.append(r["levels"])
            y.append(r["erasure"])
            e.append(r["erasure_sd"] or 0.0)
    if not series:
        return None
    return str(line_plot(series, out / "budget_sweep.png", "epsilon (levels of 255)", "mean erasure over subjects",
                         "Budget sweep (full fine-tuning)", hline=GOAL_ERASURE))


def write_fewshot_report(study: Any, scores: Scores, picks: dict[str, str | None], pretrain: dict[str, Any],
                         timings: dict[str, float], stages: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Write report.json, report.md, grids and plots into the study folder; returns the report.
    ``stages`` (done / planned) says how far the study got: a partial report says so on top."""
    s, out = study.settings, study.reports
    out.mkdir(parents=True, exist_ok=True)
    names = ordered(["clean", *s.methods])
    followups = followup_methods(s, picks)
    learned_md, learned = learned_table(scores, s.modes)
    tables = {mode: method_table(scores, names, mode) for mode in s.modes}
    pur_md, pur_rows = purification_table(scores, ["clean", *followups], s.purifications)
    sweep_md, sweep_rows = sweep_table(scores, followups, s.sweep_levels)
    # the goal is the best method's; it is compared with the best of the other side (ours vs peers)
    other = picks.get("ours") if picks.get("best") in PEERS else picks.get("peer")
    goal = scores.goal(picks.get("best"), other, s.purifications)
    controls = scores.controls(pretrain.get("quality"))
    controls_sets = [set_name("photoguard", lv, s.levels) for lv in s.control_levels] + ["substitute"]
    files = {"grids": grids(scores, names + controls_sets, out, s.modes), "pretrained_grid": quality_grid(pretrain, out),
             "budget_sweep": sweep_plot(sweep_rows, out) if s.sweep_levels else None}
    report = {"regime": "fewshot", "settings": s.to_dict(), "subjects": {k: v.to_dict() for k, v in study.subjects.items()},
              "pretrained": pretrain, "classifier": {"validation": scores.judge.validation},
              "learned": learned, "controls": controls, "tables": {mode: rows for mode, (_, rows) in tables.items()},
              "purification": pur_rows, "budget_sweep": sweep_rows, "picks": picks, "goal": goal,
              "verdict": harness_verdict(controls, goal), "judges": scores.judge.kinds, "timings": timings, "versions": run_versions(), "files": files,
              "stages": stages or {}}
    report["card_markdown"] = card_markdown(report, tables["full"][0] if "full" in tables else "")
    sections = {"learned": learned_md, "controls": controls_text(controls), "tables": {m: md for m, (md, _) in tables.items()}, "purification": pur_md,
                "sweep": sweep_md}
    report = write_report_json(report, out)
    (out / "report.md").write_text(render_markdown(report, sections))
    return report


def card_markdown(report: dict[str, Any], full_table: str) -> str:
    """The dataset card's block: the verdict, the full fine-tuning table and what it measured."""
    s = report["settings"]
    return "\n".join([report["verdict"], "", full_table, "",
                      f"Few-shot regime: a latent UNet pretrained on TAEF2 latents of a generic corpus, fine-tuned on "
                      f"{s['n_train']} images per subject; erasure 1 = the fine-tune learned nothing of the subject, "
                      f"0 = protection did nothing (mean ± sd over {len(s['seeds'])} seeds); budget {s['levels']}/255."])


def pretraining_origin(pretrained: dict[str, Any]) -> str:
    """Where the victim's weights came from, when they were not trained by this run: the shipped pretraining."""
    victim = pretrained.get("victim") or {}
    if victim.get("source") != "shipped":
        return ""
    return (f" Its weights are the pretraining shipped in the package ({victim.get('shipped')}; "
            f"{victim['recipe']['steps']} steps, {victim['seconds']:.0f} s at one thread when it was trained), "
            "checked here like any victim.")


def render_markdown(report: dict[str, Any], sections: dict[str, Any]) -> str:
    s, pre, val = report["settings"], report["pretrained"], report["classifier"]["validation"]
    q = pre.get("quality", {})
    stages = report.get("stages") or {}
    missing = [x for x in stages.get("planned", []) if x not in stages.get("done", [])]
    stopped = report["controls"]["passed"] is False
    past = stopped and s.get("past_failed_controls")
    partial = ([f"**Partial report**: stages done: {', '.join(stages['done'])}; not run yet: {', '.join(missing)} "
                + ("(stopped by a failed control: a study whose harness cannot see protection goes no further)."
                   if stopped and not past else "(the same command resumes from its cache).")] + [""] if missing else [])
    diagnostic = (["**Diagnostic run past failed controls** (`--past-failed-controls`): the tables below "
                   "describe this harness (what each method moves, and how far), not whether anything protects.",
                   ""] if past else [])
    lines = [*([f"**{HARNESS_FAILED[0].upper()}{HARNESS_FAILED[1:]}.**", ""] if stopped else []), *diagnostic,
             "# Few-shot protection report", "", *partial, report["verdict"], "",
             "## Controls (checked before any verdict)", "", sections["controls"], "", "## Setup", "",
             "Subjects: " + "; ".join(f"**{k}** ({v['train']} training, {v['heldout']} held-out: {v['source']})"
                                      for k, v in report["subjects"].items()), "",
             *([f"Corpus: {pre.get('corpus_count')} images, {pre['corpus_source']}.", ""]
               if pre.get("corpus_source") else []),
             f"Pretrained victim: FD of its samples vs its corpus {fmt(q.get('samples_fd'), '{:.1f}')} (another corpus "
             f"split {fmt(q.get('corpus_split_fd'), '{:.1f}')}, TAEF2 round trips {fmt(q.get('round_trip_fd'), '{:.1f}')}, "
             f"uniform noise {fmt(q.get('uniform_noise_fd'), '{:.1f}')}).{pretraining_origin(pre)}", "",
             "Judges (trained on clean images only), on images they never saw: " +
             ", ".join(f"{k} {v:.2f}" for k, v in val.items()), "",
             "Judge of each subject: " + ", ".join(f"{k}: {v}" for k, v in (report.get("judges") or {}).items())
             + f" (the shape judge's training augmentations: {s.get('judge_augment', 'warp')})", "",
             "## Did the victims learn the subject?", "", sections["learned"], ""]
    for mode, md in sections["tables"].items():
        lines += [f"## {mode} fine-tuning, {s['levels']}/255", "",
                  "Erasure: mean ± sd over seeds (defined seeds / seeds when a clean fine-tune learned too little).",
                  "", md, ""]
    if s["purifications"]:
        lines += ["## After purification (full fine-tuning)", "", sections["purification"], ""]
    if s["sweep_levels"]:
        lines += ["## Budget sweep (full fine-tuning)", "", sections["sweep"], "", "![budget sweep](budget_sweep.png)", ""]
    goal = ("Not judged: a control failed, so these figures cannot say whether the goal is met." if stopped
            else goal_text(report["goal"]))
    lines += ["## The goal", "", goal, "", "## Grids", ""]
    lines += [f"![{k}]({v})" for k, v in report["files"]["grids"].items()]
    t = report["timings"]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()), ""]
    return "\n".join(lines)
