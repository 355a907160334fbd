"""The sweep over the attacker's fine-tuning rate: one study per rate, the worst case over the rates whose
controls passed, and a failed rate that is never read as protection."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from test_evaluate import assert_report_moves_with_its_links
from test_fewshot import TINY, open_gates
from udp_datasets.evaluate.experiments import fewshot, fewshot_scores
from udp_datasets.evaluate.experiments.fewshot_rates import rate_folder, rates_markdown, summarise_rates
from udp_datasets.evaluate.metrics import subject

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _report(passed: bool | None, erasure: dict[str, float], protects: bool = False) -> dict:
    """The parts of a few-shot report the summary reads (one subject, ``heart``)."""
    goal = {"method": "photoguard", "per_subject": {}, "reaches_goal_on_every_subject": protects,
            "beats_noise_on_every_subject": protects, "by_erasure_on_every_subject": protects}
    return {"controls": {"passed": passed, "per_subject": {"heart": {"positive": {"16": 0.9}, "substitution": 1.0,
                                                                     "negative": 0.1}}},
            "verdict": "v", "goal": goal,
            "tables": {"full": [{"set": name, "per_subject": {"heart": {"erasure": value, "erasure_sd": 0.05}}}
                                for name, value in erasure.items()]}}


def test_the_worst_case_is_the_minimum_over_the_rates_whose_controls_passed():
    summary = summarise_rates({3e-4: _report(True, {"noise": 0.2, "photoguard": 0.78}),
                               1e-3: _report(True, {"noise": -0.1, "photoguard": 0.40}),
                               1e-2: _report(False, {"noise": 0.0, "photoguard": 0.05})})
    worst = summary["erasure"]["heart"]["photoguard"]["worst"]
    assert worst == {"erasure": 0.40, "rate": "lr-0.001", "upper_bound": True}  # 1e-2 failed: left out, a bound
    assert summary["failed_rates"] == ["lr-0.01"] and summary["protects_at_every_rate"] is False
    assert "lr-0.01: the controls did not pass" in summary["verdict"] and "only an upper bound" in summary["verdict"]
    md = rates_markdown(summary)
    assert "≤ 0.40 (lr 0.001)" in md and "0.05 ± 0.05 †" in md and "**FAIL**" in md
    assert "[lr-0.0003](lr-0.0003/report.md)" in md


def test_protection_is_shown_only_where_every_rate_protects():
    both = summarise_rates({3e-4: _report(True, {"photoguard": 0.9}, protects=True),
                            1e-3: _report(True, {"photoguard": 0.85}, protects=True)})
    assert both["protects_at_every_rate"] and both["erasure"]["heart"]["photoguard"]["worst"]["upper_bound"] is False
    assert both["verdict"].startswith("Protection is measured as effective at every fine-tuning rate")
    one = summarise_rates({3e-4: _report(True, {"photoguard": 0.9}, protects=True),
                           1e-3: _report(True, {"photoguard": 0.4}, protects=False)})
    assert not one["protects_at_every_rate"] and one["verdict"].startswith("Protection is not shown")
    assert one["erasure"]["heart"]["photoguard"]["worst"]["erasure"] == 0.4


def test_no_rate_that_passed_its_controls_gives_no_verdict():
    summary = summarise_rates({3e-4: _report(False, {"photoguard": 0.9}), 1e-3: _report(None, {})})
    assert summary["verdict"].startswith("**This harness cannot see protection")
    assert summary["erasure"]["heart"]["photoguard"]["worst"]["erasure"] is None
    assert "| photoguard | 0.90 ± 0.05 † | n/a | n/a |" in rates_markdown(summary)


def test_cli_sweeps_the_attackers_rate_sharing_the_protected_sets(tmp_path, monkeypatch, capsys):
    """``--finetune-lr A,B``: one study per rate in OUT/lr-RATE (victims fine-tuned at that rate), the protected
    sets made once in OUT/sets, and the summary in OUT/report.json whose links resolve."""
    from udp_datasets.cli.app import EXIT_FAILED, main

    monkeypatch.setattr(fewshot, "REDUCED", replace(TINY, modes=("full",), purifications=(), sweep_levels=(),
                                                    methods=("noise", "photoguard")))
    open_gates(monkeypatch)
    # 3-step victims barely lift the subject score: define erasure anyway, so that the controls pass
    monkeypatch.setattr(fewshot_scores, "erasure", lambda c, p, n: subject.erasure(c, p, n, min_lift=-np.inf))
    out = tmp_path / "r"
    code = main(["evaluate", "--regime", "fewshot", "--subjects", "cat", "--out", str(out), "--cache-dir",
                 str(tmp_path / "cache"), "--finetune-lr", "3e-4,1e-3"])
    summary = json.loads((out / "report.json").read_text())
    assert summary["regime"] == "fewshot-rates" and list(summary["rates"]) == ["lr-0.0003", "lr-0.001"]
    # the tiny victim's sample FD is undefined (a 24-image corpus), so its victim check never ran: a control
    # that did not run is not a control that passed, and the sweep exits as failed
    assert all(r["controls_passed"] is None for r in summary["rates"].values())
    assert summary["failed_rates"] == ["lr-0.0003", "lr-0.001"] and code == EXIT_FAILED
    for rate in (3e-4, 1e-3):
        report = json.loads((out / rate_folder(rate) / "report.json").read_text())
        assert report["settings"]["full"]["learning_rate"] == rate
        assert (out / rate_folder(rate) / "grids").is_dir() and not (out / rate_folder(rate) / "sets").exists()
        assert summary["erasure"]["cat"]["photoguard"]["rates"][rate_folder(rate)]["erasure"] == pytest.approx(
            next(r for r in report["tables"]["full"] if r["set"] == "photoguard")["per_subject"]["cat"]["erasure"])
    assert len(list((out / "victims").glob("full-*"))) == 2  # a victim folder per rate, one set of protected sets
    assert (out / "report.md").read_text().startswith("# Few-shot protection across the attacker's fine-tuning rate")
    assert_report_moves_with_its_links(out, tmp_path / "moved")
    printed = capsys.readouterr().out
    assert "cannot see protection" in printed and "one study per rate" in printed


@pytest.mark.parametrize("value", ["3e-4,3e-4", "fast", "3e-4,-1", "inf", ""])
def test_cli_refuses_a_rate_list_it_cannot_sweep(tmp_path, value, capsys):
    from udp_datasets.cli.app import EXIT_USAGE, main

    assert main(["evaluate", "--regime", "fewshot", "--out", str(tmp_path), "--finetune-lr", value]) == EXIT_USAGE
    assert "--finetune-lr" in capsys.readouterr().err
