"""The few-shot report's tables on hand-made summaries: every erasure shown with its seed spread."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from udp_datasets.evaluate.experiments.fewshot_report import purification_table


class StubScores:
    """Summaries of two subjects as :meth:`Scores.summary` gives them (mean and sd over seeds)."""

    SUMMARIES = {  # (subject, set, clean) -> summary
        ("a", "photoguard+jpeg75", "clean"): {"score": 0.4, "erasure": 0.5, "erasure_sd": 0.1},
        ("b", "photoguard+jpeg75", "clean"): {"score": 0.6, "erasure": 0.3, "erasure_sd": 0.3},
        ("a", "photoguard+jpeg75", "clean+jpeg75"): {"erasure": 0.6, "erasure_sd": 0.05, "artifact_vs_clean": 1.0},
        ("b", "photoguard+jpeg75", "clean+jpeg75"): {"erasure": 0.2, "erasure_sd": 0.15, "artifact_vs_clean": 2.0},
    }

    study = SimpleNamespace(subjects=("a", "b"))

    def summary(self, subject: str, name: str, mode: str, clean: str = "clean") -> dict:
        return self.SUMMARIES.get((subject, name, clean), {})

    def kept_after(self, subject: str, name: str, purification: str) -> float:
        return {"a": 0.75, "b": 0.25}[subject]


def test_purification_rows_give_each_erasure_its_seed_spread():
    md, rows = purification_table(StubScores(), ["clean", "photoguard"], ["jpeg75"])
    (row,) = rows  # the clean set has no summaries here, so no row
    assert row["erasure_vs_clean"] == pytest.approx(0.4) and row["erasure_vs_clean_sd"] == pytest.approx(0.2)
    assert row["erasure"] == pytest.approx(0.4) and row["erasure_sd"] == pytest.approx(0.1)
    assert row["kept"] == pytest.approx(0.5) and row["artifact_vs_clean"] == pytest.approx(1.5)
    assert "| jpeg75 | photoguard | 0.500 | 0.40 ± 0.20 | 0.40 ± 0.10 | 0.50 | 1.50x |" in md
