"""Purifications: what an adversary does to protected images before training on them.

``filters``: JPEG, resize, blur (Pillow), the ``--attacks`` of ``udp-datasets evaluate``.
Model-based purifications (noise, DiffPure, IMPRESS) get one module each beside it.
"""
