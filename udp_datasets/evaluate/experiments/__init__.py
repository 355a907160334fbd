"""Experiments: protected training sets -> victims -> scores -> report files.

``victim_runs`` (train, sample and score one victim per training set, cached), ``protected_sets``
(protect, cache, random-noise control), ``evaluate_command`` and ``evaluate_sd_command`` (the
cores of ``udp-datasets evaluate`` and ``evaluate-sd``), ``ablation`` / ``latent_ablation`` /
``switch_ablation`` (the committed studies of docs/efficacy.md).
"""
