"""The field's protection methods as named presets over the one PGD core and its objectives.

Each preset is a set of :class:`~udp_datasets.ProtectionConfig` fields, so every method runs
through the same PGD, budget proof, batching and provenance, and the evaluation compares them at
the same budget, steps and surrogate. ``preset_config("mist", surrogate=..., epsilon=8/255)`` gives
the config; ``--preset mist`` on the command line does the same (other flags still override).

========== ==================================================================== =====================
preset     what it optimises                                                    paper
========== ==================================================================== =====================
advdm      maximise the surrogate's denoising loss, t uniform                   Liang et al., ICML 2023
photoguard push the VAE latent E(x+d) away from E(x) (encoder attack)            Salman et al., ICML 2023
mist       AdvDM + a textural term pulling E(x+d) toward E(pattern), weighted   Liang & Wu, 2023
           as Mist's released code (see below)
mist_w1    the same as weighted in release 0.2: textural mean at weight 1 (measured
           to cancel AdvDM on the structured subjects; kept to be measured)
mist2      Mist v2 / ACE: minimise ||eps_theta(z_t, t) - E(pattern)||^2 (the     Zheng et al., 2023
           denoiser's output pulled toward the target's latent), t uniform
sds        minimise the score-distillation loss (SDS-), UNet Jacobian skipped   Xue et al., ICLR 2024
aspl       Anti-DreamBooth: surrogate fine-tuned on clean images, alternating   Van Le et al., ICCV 2023
           with PGD and training on the protected images (in fit)
metacloak  AdvDM against a pool of surrogate training stages, with EOT          Liu et al., CVPR 2024
udp        min-min (error-minimising) with a co-trained surrogate, t uniform    Zhao et al., 2023
eudp       the same with scheduler-aware timesteps p(t) ~ sqrt(abar_t)^gamma    Zhao et al., 2023
========== ==================================================================== =====================

What is ours, not the papers': every method uses sign-PGD on the L-inf ball with our 8-bit budget
proof; ``aspl`` and ``metacloak`` train their surrogates in ``fit`` on the fit subset and the
transform then attacks the frozen result (one code path for every sample, see METHOD.md "Dataset
scale"), where the papers alternate per image set; ``mist``'s textural target is our built-in
pattern unless ``target_image`` is given (``mist2``'s too); the presets of ``LATENT_ONLY`` need a
latent surrogate (a VAE to attack).

Mist's weighting, as published. Liang & Wu's released code (github.com/psyker-team/mist,
``mist_v3.py`` at commit ``70a2956ba463fb1459ec8694cf7750dde533d8f0``, class ``target_model``)
runs a *targeted* (loss-minimising) PGD on ``fn(zx, zy) - loss_semantic * rate`` in its fused mode
(``mode=2``, the default), with ``fn = nn.MSELoss(reduction="sum")`` between the latents of the image
and of the target (the textural term, a *sum* over latent elements), ``loss_semantic`` the LDM's
denoising loss (a *mean* over latent elements, t uniform) and ``rate = 10 ** (args.rate + 3)`` with
``--rate`` 1 by default, i.e. ``rate = 1e4``. Maximising ``semantic - 1e-4 * textural_sum`` is the
same problem, so ``mist`` sets ``encoder_weight=1e-4`` with ``encoder_reduction='sum'``: on SD's
64 x 64 x 4 latents that is a per-element weight of 1.64; on TAEF2's 8 x 8 x 32 latents of a 64 px
image, 0.20 (the weight grows with the latent's size, as in their code). Mist's own budget and steps
(not set by the preset): ``--epsilon 16`` grey levels (their code multiplies by 2 for its [-1, 1]
images, so it is 16/255 on our [0, 1] scale), 100 steps of 1/255.

``mist2`` (Mist v2 / ACE, Zheng et al. 2023, "Understanding and Improving Adversarial Attacks on
Latent Diffusion Model"; psyker-team/mist-v2 ``attacks/mist.py`` at commit
``ed195b944f81e361b3a172c6b3e9eaad538fcde9``, ``pgd_attack``): see ``objective='ace'`` in
:mod:`.objectives`. Ours attacks a frozen surrogate; their code alternates 5 rounds of 30 PGD steps with
LoRA fine-tuning of the surrogate on the perturbed images (mode ``lunet``). Their code's budget
(``--pgd_eps 8/255`` on [-1, 1] images) is **4/255** on our scale, step 0.005 on [-1, 1] = 0.0025
here; not set by the preset either.
"""

from __future__ import annotations

from typing import Any

from ..config import PRESET_NAMES, ProtectionConfig

PRESETS: dict[str, dict[str, Any]] = {
    "advdm": dict(objective="adversarial", timesteps="uniform", encoder_weight=0.0),
    "photoguard": dict(objective="encoder", encoder_target="away", random_start=True),
    "mist": dict(objective="adversarial", timesteps="uniform", encoder_weight=1e-4, encoder_target="pattern",
                 encoder_reduction="sum"),
    "mist_w1": dict(objective="adversarial", timesteps="uniform", encoder_weight=1.0, encoder_target="pattern"),
    "mist2": dict(objective="ace", timesteps="uniform", encoder_weight=0.0),
    "sds": dict(objective="sds", timesteps="uniform", encoder_weight=0.0),
    "aspl": dict(objective="aspl", timesteps="uniform", encoder_weight=0.0),
    "metacloak": dict(objective="adversarial", timesteps="uniform", fit_pool=3, eot="blur,resize,jpeg,noise"),
    "udp": dict(objective="unlearnable", timesteps="uniform"),
    "eudp": dict(objective="unlearnable", timesteps="eudp"),
}
"""The fields each preset sets; everything else keeps its default or the caller's value."""

LATENT_ONLY = frozenset({"photoguard", "mist", "mist_w1", "mist2", "sds"})
"""Presets that attack a VAE encoder and so need a latent surrogate."""

assert set(PRESETS) == set(PRESET_NAMES), "config.PRESET_NAMES and method/presets.py must name the same presets"


def preset_config(name: str, base: ProtectionConfig | None = None, **overrides: Any) -> ProtectionConfig:
    """The config of preset ``name``: ``base`` (or the defaults), the preset's fields, then ``overrides``
    (an override of a field the preset sets wins: ``preset_config("mist", encoder_target="away")``)."""
    if name not in PRESETS:
        from ..config import ConfigError

        raise ConfigError(f"preset={name!r} is not one of {sorted(PRESETS)}")
    return (base or ProtectionConfig()).replace(**{**PRESETS[name], "preset": name, **overrides})
