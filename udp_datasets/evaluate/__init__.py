"""Efficacy evaluation: does a protected dataset stop a model from learning it?

Folders, lowest first (a module imports only its own folder or the ones above it in this list):

- ``data``, ``subjects``, ``report``: image sets (load, resize, split, hash); the few-shot corpus and
  subjects (bundled photographs or your folder); report files (tables, grids, plots, verdict, the
  dataset card's block);
- ``metrics/``: distances, artefacts, fidelity, feature extractors, the scorer;
- ``purify/``: what an adversary does to protected images first;
- ``victims/``: the models an adversary trains (pixel DDPM, latent DDPM + VAE, LoRA SD, the few-shot
  latent UNets on TAEF2);
- ``experiments/``: runs that tie them together (the ``evaluate`` / ``evaluate-sd`` commands, the
  ablations, the few-shot study of ``evaluate --regime fewshot``).

``tiny_models`` builds tiny real SD components in code for tests and offline experiments; the
core package (models, method, protector, jobs, publish) never imports it.
"""
