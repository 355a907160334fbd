"""Victims: what an unauthorised trainer does with the published images.

``pixel`` (a DDPM trained from scratch; the shared denoiser loop and sampler), ``autoencoder``
(the small SD-like VAE trained offline), ``latent`` (latent DDPMs pretrained then fine-tuned
through that VAE), ``sd_lora`` / ``sd_lora_training`` / ``sd_lora_sampling`` (LoRA DreamBooth
fine-tuning of a Stable Diffusion). A victim knows how to train and sample; scoring and reports
live in ``metrics/`` and ``experiments/``.
"""
