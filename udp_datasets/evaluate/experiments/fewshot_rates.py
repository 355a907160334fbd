"""The attacker's fine-tuning rate, swept: one few-shot study per learning rate, then the worst case.

An unauthorised fine-tune picks its own learning rate, and what protection erases depends on it
(docs/efficacy.md: PhotoGuard on one subject erased 0.78 at lr 3e-4 and 0.40 at 1e-3). A protection is only
as good as its erasure at the attacker's best rate, so the sweep reports, per subject and method, the
*minimum* erasure over the rates. A rate whose controls failed measured nothing: its figures are shown,
labelled, and left out of the minimum, which is then only an upper bound on the worst case (the attacker
may do better at the rate the harness cannot see), and the summary says so first.

Every rate shares one work folder (the protected sets, the judge, the pretrained victim: none depends on
the rate; victims are keyed by their recipe, so each rate gets its own). Each rate's full report goes to
``OUT/lr-RATE/``, the summary to ``OUT/report.md`` and ``OUT/report.json``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..report import write_report_json
from .fewshot_report import HARNESS_FAILED, fmt, pm, shown_effective, verdict

logger = logging.getLogger(__name__)


def rate_folder(rate: float) -> str:
    """The report folder of one rate: ``lr-0.0003``."""
    return f"lr-{rate:g}"


def run_rate_sweep(out: str | Path, settings: Any, rates: Sequence[float], subjects: dict[str, Any],
                   corpus: Sequence[np.ndarray], cache_dir: str | Path, progress: bool = True,
                   judge_faces: bool = False, corpus_source: str | None = None) -> dict[str, Any]:
    """Run (or resume) one study per full fine-tuning rate in ``out`` and write the summary; returns it."""
    from .fewshot import run_fewshot

    if len(set(rates)) != len(rates) or not all(r > 0 for r in rates):
        raise ValueError(f"fine-tuning rates {list(rates)}: distinct positive numbers")
    out = Path(out)
    reports = {}
    for rate in rates:
        logger.info("attacker's rate %g: study %s", rate, out / rate_folder(rate))
        rated = replace(settings, full=replace(settings.full, learning_rate=rate))
        reports[rate] = run_fewshot(out, rated, subjects, corpus, cache_dir, progress=progress,
                                    judge_faces=judge_faces, corpus_source=corpus_source,
                                    report_dir=out / rate_folder(rate))
    summary = summarise_rates(reports)
    summary = write_report_json(summary, out)
    (out / "report.md").write_text(rates_markdown(summary))
    return summary


def summarise_rates(reports: dict[float, dict[str, Any]]) -> dict[str, Any]:
    """The sweep's summary from the per-rate reports (full fine-tuning): per rate its controls and
    verdict; per subject and method the erasure at each rate and the minimum over the rates that passed."""
    passed = {rate: r["controls"]["passed"] is True for rate, r in reports.items()}
    per_rate = {rate_folder(rate): {
        "learning_rate": rate, "controls_passed": r["controls"]["passed"], "controls": r["controls"]["per_subject"],
        "verdict": r["verdict"], "goal": r["goal"],
        "protects": passed[rate] and shown_effective(r["goal"]),
        "report": str(Path(rate_folder(rate)) / "report.md")} for rate, r in reports.items()}
    erasure: dict[str, dict[str, dict[str, Any]]] = {}
    for rate, r in reports.items():
        for row in r["tables"].get("full", []):
            for subject, cell in row["per_subject"].items():
                at = erasure.setdefault(subject, {}).setdefault(row["set"], {"rates": {}})
                at["rates"][rate_folder(rate)] = {"erasure": cell.get("erasure"), "erasure_sd": cell.get("erasure_sd"),
                                                  "controls_passed": passed[rate]}
    for methods in erasure.values():
        for at in methods.values():
            seen = {k: v["erasure"] for k, v in at["rates"].items() if v["controls_passed"] and v["erasure"] is not None}
            worst = min(seen, key=seen.get) if seen else None
            at["worst"] = {"erasure": seen[worst] if worst else None, "rate": worst,
                           "upper_bound": len(seen) < len(at["rates"])}
    failed = [rate_folder(rate) for rate, ok in passed.items() if not ok]
    summary = {"regime": "fewshot-rates", "rates": per_rate, "erasure": erasure, "failed_rates": failed,
               "protects_at_every_rate": all(v["protects"] for v in per_rate.values()),
               "files": {"reports": {k: v["report"] for k, v in per_rate.items()}}}
    summary["verdict"] = sweep_verdict(summary)
    return summary


def sweep_verdict(summary: dict[str, Any]) -> str:
    """One paragraph: no verdict where no rate passed its controls; protection shown only at every rate."""
    rates, failed = summary["rates"], summary["failed_rates"]
    if len(failed) == len(rates):
        return (f"**{HARNESS_FAILED[0].upper()}{HARNESS_FAILED[1:]}.** No rate swept ({', '.join(rates)}) "
                "passed its controls: no verdict is given.")
    if summary["protects_at_every_rate"]:
        return ("Protection is measured as effective at every fine-tuning rate swept (" + ", ".join(rates) +
                "): the erasure below is the attacker's worst case over these rates.")
    parts = [f"{k}: " + ("the controls did not pass, so what this rate's attacker learns is not measured." if k in failed
                         else verdict(v["goal"])) for k, v in rates.items() if not v["protects"]]
    return ("Protection is not shown at every fine-tuning rate an attacker may pick. " + " ".join(parts) +
            (" The worst case below leaves those rates out, so it is only an upper bound." if failed else ""))


def rates_markdown(summary: dict[str, Any]) -> str:
    """The summary as markdown: the verdict, the controls per rate, and erasure per rate with its minimum."""
    rates = summary["rates"]
    names = list(rates)
    lines = ["# Few-shot protection across the attacker's fine-tuning rate", "", summary["verdict"], "",
             "## Controls per rate", "", "| rate | controls | positive control (PhotoGuard, per budget) | "
             "substitution | noise | report |", "|---|---|---|---|---|---|"]
    for name, r in rates.items():
        for subject, c in r["controls"].items():
            positive = ", ".join(f"{lv}/255 {fmt(v, '{:.2f}')}" for lv, v in (c.get("positive") or {}).items())
            state = {True: "pass", False: "**FAIL**", None: "**not passed** (not run or undefined)"}[r["controls_passed"]]
            lines.append(f"| {r['learning_rate']:g} ({subject}) | {state} | {positive or 'n/a'} | "
                         f"{fmt(c.get('substitution'), '{:.2f}')} | {fmt(c.get('negative'), '{:.2f}')} | "
                         f"[{name}]({r['report']}) |")
    lines += ["", "## Erasure at each rate (full fine-tuning, mean ± sd over seeds)", "",
              "A rate whose controls did not pass is marked †: its figures say nothing and are left out of the worst "
              "case (then marked ≤: the attacker may do better at the rate the harness cannot see).", ""]
    for subject, methods in summary["erasure"].items():
        lines += [f"### {subject}", "", "| training set | " + " | ".join(f"lr {rates[n]['learning_rate']:g}" for n in names)
                  + " | worst case |", "|---" * (len(names) + 2) + "|"]
        for method, at in methods.items():
            cells = [(pm(at["rates"][n]["erasure"], at["rates"][n]["erasure_sd"])
                      + ("" if at["rates"][n]["controls_passed"] else " †")) if n in at["rates"] else "n/a"
                     for n in names]
            w = at["worst"]
            worst = "n/a" if w["erasure"] is None else (("≤ " if w["upper_bound"] else "")
                                                        + f"{w['erasure']:.2f} (lr {rates[w['rate']]['learning_rate']:g})")
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {worst} |")
        lines.append("")
    return "\n".join(lines)
