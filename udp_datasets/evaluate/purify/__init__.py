"""Purifications: what an adversary does to protected images before training on them.

``filters``: JPEG, resize, blur (Pillow) and Gaussian noise, the ``--attacks`` of ``udp-datasets evaluate``.
Model-based purifications get one module each beside it: ``diffpure`` (noise the latent to a moderate t,
denoise with a clean pretrained model) and ``impress`` (consistency with the autoencoder's round trip).
"""
