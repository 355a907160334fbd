"""The committed glyph study as the diagnostic scripts beside this file reopen it: seed 0, full fine-tuning,
the bundled subjects and glyph corpus, and the study's own judges (trained on clean images only, cached in
STUDY_DIR), exactly as ``udp-datasets evaluate --regime fewshot --full`` made them."""

from dataclasses import replace
from pathlib import Path

from udp_datasets.evaluate.experiments import fewshot as F
from udp_datasets.evaluate.experiments.fewshot_setup import prepare_classifier
from udp_datasets.evaluate.glyphs import glyph_corpus
from udp_datasets.evaluate.subjects import any_subject


def reopen(study_dir: Path, pretrained: Path, workers: int = 1):
    """(settings, subjects, corpus, study, judge) of the study in ``study_dir`` on ``pretrained``."""
    s = replace(F.FewshotSettings(), seeds=(0,), modes=("full",), workers=workers, threads=1)
    subjects = {n: any_subject(n, 0, s.size, s.n_train, s.n_heldout) for n in s.subjects}
    corpus = glyph_corpus(s.pretrain.corpus_count, s.pretrain.corpus_seed, s.size)
    study = F.Study(study_dir, pretrained, s, subjects, substitutes=corpus[-s.n_train:])
    return s, subjects, corpus, study, prepare_classifier(study, corpus)
