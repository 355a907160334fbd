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
mist       AdvDM + a textural term pulling E(x+d) toward E(pattern)             Liang & Wu, 2023
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
pattern unless ``target_image`` is given; ``photoguard``, ``mist`` and ``sds`` need a latent
surrogate (a VAE to attack).
"""

from __future__ import annotations

from typing import Any

from ..config import PRESET_NAMES, ProtectionConfig

PRESETS: dict[str, dict[str, Any]] = {
    "advdm": dict(objective="adversarial", timesteps="uniform", encoder_weight=0.0),
    "photoguard": dict(objective="encoder", encoder_target="away", random_start=True),
    "mist": dict(objective="adversarial", timesteps="uniform", encoder_weight=1.0, encoder_target="pattern"),
    "sds": dict(objective="sds", timesteps="uniform", encoder_weight=0.0),
    "aspl": dict(objective="aspl", timesteps="uniform", encoder_weight=0.0),
    "metacloak": dict(objective="adversarial", timesteps="uniform", fit_pool=3, eot="blur,resize,jpeg,noise"),
    "udp": dict(objective="unlearnable", timesteps="uniform"),
    "eudp": dict(objective="unlearnable", timesteps="eudp"),
}
"""The fields each preset sets; everything else keeps its default or the caller's value."""

LATENT_ONLY = frozenset({"photoguard", "mist", "sds"})
"""Presets that attack a VAE encoder and so need a latent surrogate."""

assert set(PRESETS) == set(PRESET_NAMES), "config.PRESET_NAMES and method/presets.py must name the same presets"


def preset_config(name: str, base: ProtectionConfig | None = None, **overrides: Any) -> ProtectionConfig:
    """The config of preset ``name``: ``base`` (or the defaults), the preset's fields, then ``overrides``
    (an override of a field the preset sets wins: ``preset_config("mist", encoder_target="away")``)."""
    if name not in PRESETS:
        from ..config import ConfigError

        raise ConfigError(f"preset={name!r} is not one of {sorted(PRESETS)}")
    return (base or ProtectionConfig()).replace(**{**PRESETS[name], "preset": name, **overrides})
