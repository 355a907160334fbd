"""The few-shot report's tables and grids on hand-made inputs: every erasure shown with its seed spread, every
row of a grid named in full."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from udp_datasets.evaluate.experiments.fewshot_report import purification_table
from udp_datasets.evaluate.report import label_lines, labelled_rows


class StubScores:
    """Summaries of two subjects as :meth:`Scores.summary` gives them (mean and sd over seeds)."""

    SUMMARIES = {  # (subject, set, clean) -> summary
        ("a", "photoguard+jpeg75", "clean"): {"score": 0.4, "erasure": 0.5, "erasure_sd": 0.1},
        ("b", "photoguard+jpeg75", "clean"): {"score": 0.6, "erasure": 0.3, "erasure_sd": 0.3},
        ("a", "photoguard+jpeg75", "clean+jpeg75"): {"erasure": 0.6, "erasure_sd": 0.05, "artifact_vs_clean": 1.0,
                                                     "erasure_n": 3, "seeds": 3},
        ("b", "photoguard+jpeg75", "clean+jpeg75"): {"erasure": 0.2, "erasure_sd": 0.15, "artifact_vs_clean": 2.0,
                                                     "erasure_n": 3, "seeds": 3},
        # a purified clean fine-tune that learned too little on two seeds of three: one erasure, no sd
        ("a", "photoguard+diffpure200", "clean"): {"score": 0.1, "erasure": 0.8},
        ("a", "photoguard+diffpure200", "clean+diffpure200"): {"erasure": 0.24, "erasure_n": 1, "seeds": 3},
    }

    study = SimpleNamespace(subjects=("a", "b"))
    judge = SimpleNamespace(check_for=lambda subject: None)  # no second shape judge

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


def test_purification_rows_say_on_how_many_seeds_an_erasure_was_defined():
    md, rows = purification_table(StubScores(), ["photoguard"], ["diffpure200"])
    assert rows[0]["erasure_seeds"] == (1, 3) and "| 0.24 (1/3) |" in md


def test_a_grid_names_each_variant_in_full():
    """Variants differ at the end of their names; a grid row must show all of it (a cut-off label made four
    generator rows read alike)."""
    names = ["photoguard:engine=generator:generator=gen_shapes1500",
             "photoguard:engine=generator:generator=gen_bundled1500", "clean-ft"]
    for name in names:
        lines = label_lines(name, 25, 5)
        assert "".join(lines) == name and all(len(line) <= 25 for line in lines)
    assert label_lines("x" * 200, 25, 5)[-1].endswith("…") and len(label_lines("x" * 200, 25, 5)) == 5


def test_labelled_rows_draws_a_long_label_on_several_lines(tmp_path):
    import numpy as np
    from PIL import Image

    tile = np.full((8, 8, 3), 255, np.uint8)
    short = np.asarray(Image.open(labelled_rows([("ab", [tile])], tmp_path / "a.png")).convert("L"))
    long = np.asarray(Image.open(labelled_rows([("photoguard:engine=generator:generator=gen_shapes1500", [tile])],
                                               tmp_path / "b.png")).convert("L"))
    ink_rows = lambda img: int((img[:, :150] < 128).any(axis=1).sum())  # noqa: E731
    assert ink_rows(long) > 2 * ink_rows(short)  # three lines of text, not one


def test_purification_rows_give_the_second_judges_erasure_where_there_is_one():
    """0.3.8: a protection must hold under both shape judges, so a purified set's erasure is given by the second
    judge too (mean over subjects), in a column of its own; a study with no second judge keeps 7 columns."""
    stub = StubScores()
    stub.SUMMARIES = {**StubScores.SUMMARIES,
                      ("a", "photoguard+jpeg75", "clean+jpeg75"): {**StubScores.SUMMARIES[("a", "photoguard+jpeg75", "clean+jpeg75")],
                                                                   "erasure_shape_strong": 0.3},
                      ("b", "photoguard+jpeg75", "clean+jpeg75"): {**StubScores.SUMMARIES[("b", "photoguard+jpeg75", "clean+jpeg75")],
                                                                   "erasure_shape_strong": 0.1}}
    stub.judge = SimpleNamespace(check_for=lambda subject: "shape_strong")
    md, rows = purification_table(stub, ["photoguard"], ["jpeg75"])
    assert rows[0]["erasure_check"] == pytest.approx(0.2) and rows[0]["check_judge"] == "shape_strong"
    assert "by `shape_strong` |" in md.splitlines()[0] and md.splitlines()[1] == "|---" * 8 + "|"
    assert md.splitlines()[2].endswith("| 1.50x | 0.20 |")
    plain, _ = purification_table(StubScores(), ["photoguard"], ["jpeg75"])
    assert plain.splitlines()[1] == "|---" * 7 + "|" and "shape_strong" not in plain
