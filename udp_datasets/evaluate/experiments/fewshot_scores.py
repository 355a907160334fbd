"""Scores of a few-shot study's victims: subject score, erasure, artifacts, FD, and the goal's tests.

Every victim's samples are scored once against its subject's held-out images (:mod:`..metrics.subject`).
Erasure is computed per seed (clean-ft, protected-ft and never-shown of the same seed: same
fine-tuning noise, same sampling noise) and summarised as mean and standard deviation over seeds
(n - 1); a seed whose clean fine-tune lifted the subject score by less than ``MIN_LIFT`` gives no
erasure ("a victim that learns nothing proves nothing"), and the tables say how many seeds counted.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..metrics.subject import MIN_LIFT, artifact_score, erasure, lift
from ..victims.fewshot import to_tensor
from .fewshot_tasks import load_images, set_name, training_set

GOAL_ERASURE = 0.8
GOAL_ARTIFACTS = 2.0
KEEP_AFTER_PURIFICATION = 0.5
VICTIM_QUALITY_FACTOR = 10.0
"""The pretrained victim has learned its corpus when its samples' FD to corpus images is at most this
many times that of a corpus split through the victim's VAE (:func:`victim_reference_fd`; one feature space). A victim that never
learned its domain (FD 130x a corpus split in issue 17's run) cannot show what fine-tuning learns."""
POSITIVE_MIN = 0.8
"""The positive control (a plainly visible PhotoGuard push) must erase at least this much."""
SUBSTITUTION_MIN = 0.8
"""Fine-tuning on another subject's images must read as erasure of at least this much (ideally ~1)."""
NEGATIVE_MAX = 0.5
"""Random noise of the study's budget must erase less than this: a harness in which noise "erases"
0.76 (issue 17) reads anything as protection."""
HARNESS_FAILED = "this harness cannot see protection; its figures say nothing"


def victim_reference_fd(quality: dict[str, Any]) -> float:
    """What the victim check compares the pretrained victim's samples with: a corpus split's FD after the
    victim's own VAE round trip (the best any latent model on that VAE can do), or the plain split's
    when it is larger or no round trip was measured."""
    return max(quality["corpus_split_fd"], quality.get("round_trip_fd") or 0.0)


FOLLOWUP_KEYS = ("noise", "best", "second", "ours", "peer", "all")
"""What ``followup_sets`` may name besides a study method itself: ``best`` / ``second`` / ``ours`` / ``peer``
resolved by the picks, ``all`` for every method of the study."""


def followup_methods(settings: Any, picks: dict[str, str | None]) -> list[str]:
    """The methods the purifications and the sweep run on: ``settings.followup_sets`` resolved by the picks
    (:data:`FOLLOWUP_KEYS`); a method's own name stands for itself (``--followups photoguard:eot=noise``)."""
    chosen = {"noise": "noise", **picks}
    out: list[str] = []
    for key in settings.followup_sets:
        names = settings.methods if key == "all" else [chosen.get(key, key)]
        out.extend(n for n in names if n in settings.methods and n not in out)
    return out


def mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample standard deviation or None for one value, count) of the defined values."""
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else None), len(v)


class Scores:
    """Lazily scored victims of one :class:`~.fewshot.Study` with its :class:`~.fewshot_setup.Judge`."""

    def __init__(self, study: Any, judge: Any):
        self.study, self.judge = study, judge
        self.heldout = {s: to_tensor(load_images(study.out / "sets" / s / "heldout.npz")) for s in study.subjects}
        self._memo: dict[tuple, dict[str, Any] | None] = {}

    # ------------------------------------------------------------ single victims
    def _score(self, path: Path, subject: str) -> dict[str, Any] | None:
        key = (str(path), subject)
        if key not in self._memo:
            self._memo[key] = None
            if path.exists():
                images = load_images(path)
                x = to_tensor(images)
                info_path = path.with_suffix(".json")
                info = json.loads(info_path.read_text()) if info_path.exists() else {}
                record = {f"score_{kind}": judge.score(x, subject) for kind, judge in self.judge.scorers().items()}
                kind = self.judge.for_subject(subject)
                if kind == "faces":
                    record.update(self._faces(images, subject))
                    record["score"] = record["ism"]
                else:
                    record["score"] = record[f"score_{kind}"]
                record.update({"artifact": artifact_score(x, self.heldout[subject]),
                               "fd": self.judge.space.fd(x, self.heldout[subject]),
                               "final_loss": info.get("final_loss"), "train_seconds": info.get("train_seconds")})
                self._memo[key] = record
        return self._memo[key]

    def _faces(self, images: list, subject: str) -> dict[str, Any]:
        """FDFR and ISM (identity similarity to the subject's clean training images) of a sample set."""
        from ..metrics.faces import face_scores

        return face_scores(images, load_images(self.study.set_path(subject, "clean", 0)), self.judge.faces)

    def victim(self, subject: str, name: str, mode: str, seed: int) -> dict[str, Any] | None:
        return self._score(self.study.victim_path(subject, name, mode, seed), subject)

    def never(self, subject: str, seed: int) -> dict[str, Any] | None:
        return self._score(self.study.never_path(seed), subject)

    def protection(self, subject: str, name: str, seed: int) -> dict[str, Any]:
        path = self.study.set_path(subject, name, seed).with_suffix(".json")
        return json.loads(path.read_text()) if path.exists() else {}

    def latent_score(self, subject: str, name: str, seed: int) -> float | None:
        """The subject's judge on the victim VAE's round trips of a *training set* (clean or protected):
        how much of the subject the latents a victim trains on still carry. A protection that leaves it at
        the clean set's level has not removed the subject from the victim's data; it can act only through
        what the victim learns from those latents."""
        path = self.study.set_path(subject, name, seed)
        key = ("latent", str(path), subject)
        if key not in self._memo:
            self._memo[key] = None
            scorer = self.judge.scorers().get(self.judge.for_subject(subject))
            if path.exists() and scorer is not None:
                from .fewshot_tasks import victim_codec
                from ..metrics.arrays import hwc_to_nchw
                from ..victims.fewshot import decode, encode

                vae = victim_codec(str(self.study.pretrained))
                x = to_tensor(decode(vae, encode(vae, hwc_to_nchw(load_images(path)))))
                self._memo[key] = {"score": float(scorer.score(x, subject))}
        record = self._memo[key]
        return None if record is None else record["score"]

    def erasure(self, subject: str, name: str, mode: str, seed: int, clean: str = "clean",
                key: str = "score") -> float | None:
        """Erasure by the subject's judge (``key`` ``score``) or by another (``score_shape``, ``score_texture``)."""
        c, p, n = self.victim(subject, clean, mode, seed), self.victim(subject, name, mode, seed), self.never(subject, seed)
        if c is None or p is None or n is None or c.get(key) is None or p.get(key) is None or n.get(key) is None:
            return None
        return erasure(c[key], p[key], n[key])

    def artifact_vs_clean(self, subject: str, name: str, mode: str, seed: int, clean: str = "clean") -> float | None:
        c, p = self.victim(subject, clean, mode, seed), self.victim(subject, name, mode, seed)
        return None if c is None or p is None else p["artifact"] / c["artifact"]

    # ------------------------------------------------------------ over seeds
    def summary(self, subject: str, name: str, mode: str, clean: str = "clean") -> dict[str, Any]:
        """Mean and sd over seeds of every number of one (subject, set, mode)."""
        seeds = self.study.settings.seeds
        runs = [self.victim(subject, name, mode, s) for s in seeds]
        if all(r is None for r in runs):
            return {}
        out: dict[str, Any] = {"seeds": sum(r is not None for r in runs)}
        for key, values in (("erasure", [self.erasure(subject, name, mode, s, clean) for s in seeds]),
                            ("artifact_vs_clean", [self.artifact_vs_clean(subject, name, mode, s, clean) for s in seeds]),
                            ("score", [r["score"] if r else None for r in runs]),
                            ("artifact", [r["artifact"] if r else None for r in runs]),
                            ("fd", [r["fd"] if r else None for r in runs]),
                            ("fdfr", [r.get("fdfr") if r else None for r in runs]),
                            *((f"erasure_{kind}", [self.erasure(subject, name, mode, s, clean, f"score_{kind}")
                                                   for s in seeds]) for kind in self.judge.scorers())):
            out[key], out[f"{key}_sd"], out[f"{key}_n"] = mean_sd(values)
        base = training_set(name)
        prot = [self.protection(subject, base, s) for s in seeds]
        for key in ("psnr_db", "latent_shift", "seconds"):
            out[key] = mean_sd([p.get(key) for p in prot])[0]
        if base == name:  # a purified set's latents are not its training set's
            out["latent_score"] = mean_sd([self.latent_score(subject, name, s) for s in seeds])[0]
        return out

    def learned(self, subject: str, mode: str) -> dict[str, Any]:
        """The check before any erasure counts: clean fine-tune vs never-shown, per seed."""
        rows = []
        for s in self.study.settings.seeds:
            c, n = self.victim(subject, "clean", mode, s), self.never(subject, s)
            if c is not None and n is not None and c["score"] is not None and n["score"] is not None:
                rows.append({"seed": s, "clean": c["score"], "never": n["score"], "lift": lift(c["score"], n["score"]),
                             "learned": lift(c["score"], n["score"]) >= MIN_LIFT})
            elif c is not None and n is not None:  # e.g. no face found in either set: nothing learned is shown
                rows.append({"seed": s, "clean": c["score"], "never": n["score"], "lift": None, "learned": False})
        return {"seeds": rows, "all_learned": bool(rows) and all(r["learned"] for r in rows),
                "clean": mean_sd([r["clean"] for r in rows])[0], "never": mean_sd([r["never"] for r in rows])[0],
                "min_lift": MIN_LIFT}

    def goal_progress(self, name: str, mode: str) -> tuple[float, float] | None:
        """The pick's sort key, over subjects: (mean erasure / 0.8, mean artifact ratio to clean-ft / 2); 1 is the
        goal. Erasure ranks first, as issue 17's goal is erasure; the artifact ratio only breaks ties and ranks
        the methods whose erasure is undefined. (Until 0.3.7 the key was the larger of the two, and the pick
        chose a generator at erasure 0.32 and 2.01x artifacts over PhotoGuard's 0.70: noise alone made 1.65x.)"""
        er, ar = [], []
        for subject in self.study.subjects:
            s = self.summary(subject, name, mode)
            if s.get("erasure") is not None:
                er.append(s["erasure"])
            if s.get("artifact_vs_clean") is not None:
                ar.append(s["artifact_vs_clean"])
        if not er and not ar:
            return None
        return (float(np.mean(er)) / GOAL_ERASURE if er else -math.inf,
                float(np.mean(ar)) / GOAL_ARTIFACTS if ar else -math.inf)

    # ------------------------------------------------------------ the controls
    def victim_factor(self) -> float:
        """The study's victim-check factor; the module default unless the settings changed it."""
        factor = getattr(self.study.settings, "victim_check_factor", None)
        return VICTIM_QUALITY_FACTOR if factor is None else factor

    def controls(self, quality: dict[str, Any] | None) -> dict[str, Any]:
        """The checks every report makes before any verdict (issue 17): the pretrained victim learned
        its corpus; each clean fine-tune learned its subject; the positive control (PhotoGuard at
        ``control_levels``) and the substitution control (fine-tuning on another subject) read as
        erasure; random noise does not. ``passed`` is None while a control has not run."""
        s = self.study.settings
        victim_ok = None
        if quality and quality.get("samples_fd") is not None and quality.get("corpus_split_fd"):
            victim_ok = quality["samples_fd"] <= self.victim_factor() * victim_reference_fd(quality)
        per_subject = {}
        for subject in self.study.subjects:
            positive = {lv: self.summary(subject, set_name("photoguard", lv, s.levels), "full")
                        for lv in s.control_levels}
            pos = {lv: summary.get("erasure") for lv, summary in positive.items()}
            sub = self.summary(subject, "substitute", "full").get("erasure")
            latent = {"clean": self.latent_score(subject, "clean", 0),
                      **{str(lv): summary.get("latent_score") for lv, summary in positive.items()}}
            neg = self.summary(subject, "noise", "full").get("erasure")
            learned = self.learned(subject, "full")
            check = self.judge.check_for(subject)
            per_subject[subject] = {
                "learned": learned["all_learned"] if learned["seeds"] else None,
                "positive": {str(lv): v for lv, v in pos.items()},
                # not a gate: what the second shape judge reads of the same push (see Scores.goal)
                "positive_check": ({str(lv): summary.get(f"erasure_{check}") for lv, summary in positive.items()}
                                   if check else None), "check_judge": check,
                "positive_latent_score": latent,
                "positive_passed": None if any(v is None for v in pos.values()) else all(v >= POSITIVE_MIN for v in pos.values()),
                "substitution": sub, "substitution_passed": None if sub is None else sub >= SUBSTITUTION_MIN,
                "negative": neg, "negative_passed": None if neg is None else neg < NEGATIVE_MAX}
        checks = [victim_ok] + [v[k] for v in per_subject.values()
                                for k in ("learned", "positive_passed", "substitution_passed", "negative_passed")]
        passed = False if any(c is False for c in checks) else (None if any(c is None for c in checks) else True)
        return {"passed": passed, "victim_learned_corpus": victim_ok, "victim_quality": quality,
                "per_subject": per_subject, "thresholds": {
                    "victim_fd_factor": self.victim_factor(), "victim_fd_factor_default": VICTIM_QUALITY_FACTOR,
                    "min_lift": MIN_LIFT, "positive_min": POSITIVE_MIN,
                    "substitution_min": SUBSTITUTION_MIN, "negative_max": NEGATIVE_MAX,
                    "positive_levels": list(s.control_levels)}}

    # ------------------------------------------------------------ the goal
    def goal(self, best: str | None, peer: str | None, purifications: Sequence[str]) -> dict[str, Any]:
        """The issue's Goal, tested at full fine-tuning for ``best`` (ours) against noise and ``peer``."""
        if best is None:
            return {"method": None}
        per_subject = {}
        for subject in self.study.subjects:
            b, n = self.summary(subject, best, "full"), self.summary(subject, "noise", "full")
            p = self.summary(subject, peer, "full") if peer else {}
            # the goal is reached by erasure (issue 17's goal) or, failing that, by artifacts (issue 12's
            # alternative); "beats noise" is tested on the measure that reached it, since random noise makes
            # artifacts too (1.65x the clean fine-tune's on the grey heart): until 0.3.7 an artifact-reached goal
            # was tested on erasure, and a generator that let the fine-tune learn 68 % of the heart (erasure
            # 0.32) at 2.01x artifacts (noise 1.65x) read as "protection measured as effective"
            by_erasure = (b.get("erasure") or -math.inf) >= GOAL_ERASURE
            reached_by = "erasure" if by_erasure else (
                "artifacts" if (b.get("artifact_vs_clean") or 0.0) >= GOAL_ARTIFACTS else None)
            key = "artifact_vs_clean" if reached_by == "artifacts" else "erasure"
            spread = max(b.get(f"{key}_sd") or 0.0, n.get(f"{key}_sd") or 0.0)
            # a spread needs at least two seeds of both; with one, "beats noise" is not measurable (None)
            measured = min(b.get(f"{key}_n") or 0, n.get(f"{key}_n") or 0) >= 2
            beats_noise = None if not measured else b[key] - n[key] > spread
            kept = {pur: self.kept_after(subject, best, pur) for pur in purifications}
            check = self.judge.check_for(subject)
            check_erasure = b.get(f"erasure_{check}") if check else None
            per_subject[subject] = {
                # the second shape judge (0.3.8): an erasure that only one of two valid shape judges sees is the
                # judge's strictness, not shown protection; None where there is no second judge or no erasure
                "check_judge": check, "check_erasure": check_erasure, "check_erasure_sd": b.get(f"erasure_{check}_sd"),
                "check_noise_erasure": n.get(f"erasure_{check}") if check else None,
                "holds_under_check_judge": (None if reached_by != "erasure" or check_erasure is None
                                            else check_erasure >= GOAL_ERASURE),
                "erasure": b.get("erasure"), "erasure_sd": b.get("erasure_sd"),
                "artifact_vs_clean": b.get("artifact_vs_clean"), "noise_erasure": n.get("erasure"),
                "noise_erasure_sd": n.get("erasure_sd"), "noise_artifact_vs_clean": n.get("artifact_vs_clean"),
                "peer_erasure": p.get("erasure"), "spread": spread,
                "reaches_goal": reached_by is not None, "reached_by": reached_by,
                "beats_noise_by_more_than_spread": beats_noise,
                # not measured (None) without both erasures, e.g. a study with no method of the other side
                "at_least_peer": (None if b.get("erasure") is None or p.get("erasure") is None
                                  else b["erasure"] >= p["erasure"]),
                "kept_after": kept}
        def everywhere(key: str) -> bool | None:
            """True on every subject; None when some subject could not be measured and none failed."""
            values = [v[key] for v in per_subject.values()]
            if not values or any(x is False for x in values):
                return False
            return None if any(x is None for x in values) else True

        kept_values = [v["kept_after"].get(p) for v in per_subject.values() for p in ("jpeg75", "noise0.05")
                       if p in purifications]
        # not measured (None) when a purification has not run yet or erasure was undefined; a measured
        # failure anywhere is a no
        kept_ok = (False if any(k is not None and k < KEEP_AFTER_PURIFICATION for k in kept_values)
                   else None if any(k is None for k in kept_values) else True)
        return {"method": best, "peer": peer, "per_subject": per_subject,
                "reaches_goal_on_every_subject": everywhere("reaches_goal"),
                "by_erasure_on_every_subject": all(v["reached_by"] == "erasure" for v in per_subject.values()),
                "beats_noise_on_every_subject": everywhere("beats_noise_by_more_than_spread"),
                "at_least_peer_on_every_subject": everywhere("at_least_peer"),
                "holds_under_check_judge": (False if any(v["holds_under_check_judge"] is False for v in per_subject.values())
                                            else True if any(v["holds_under_check_judge"] for v in per_subject.values())
                                            else None),
                "keeps_half_after_jpeg_and_noise": kept_ok if kept_values else None}

    def kept_after(self, subject: str, name: str, purification: str) -> float | None:
        """Erasure after purification (vs the clean images purified the same way) / erasure before."""
        before = self.summary(subject, name, "full").get("erasure")
        after = self.summary(subject, f"{name}+{purification}", "full", clean=f"clean+{purification}").get("erasure")
        if before is None or after is None or before <= 0:
            return None
        return after / before
