"""ProtectionConfig: the one description of a protection job.

It is frozen and JSON-serialisable so that a job can be re-run, hashed into the
datasets fingerprint, and written into the provenance card. Every choice that
METHOD.md marks as *ours* is a field here, so the evaluation can measure it.

``epsilon`` is on the 0-1 scale of normalised pixels (8/255 means 8 grey levels);
:func:`parse_epsilon` accepts the spellings ``"8/255"``, ``"0.0314"`` and ``"8"``
(levels) that people type on a command line.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

CONFIG_VERSION = 1
"""The format of a config record (the ``version`` field); unchanged since 0.1."""

DEFAULTS_VERSION = 2
"""The generation of defaults a new config gets (``config_version``), see :func:`apply_version_defaults`.

1: the defaults of 0.1-0.2 (every field's dataclass default; no surrogate = the built-in pixel
surrogate fitted on the data). 2 (0.3): on a latent surrogate, the method of
:data:`LATENT_DEFAULTS_V2`; on the command line, no ``--surrogate`` = the shipped latent pair.
A config mapping without ``config_version`` (every file and job record written before 0.3) reads as 1;
``ProtectionConfig()`` in Python is 2."""

LATENT_DEFAULTS_V2: dict[str, Any] = {"objective": "encoder", "encoder_target": "away", "random_start": True}
"""The method of config version 2 on a latent surrogate: the fields it sets, over the dataclass defaults.
Today the ``photoguard`` preset's fields, on the only positive measurement there is (METHOD.md's held-out
check: PhotoGuard erased ~1.0 of a shape-defined subject at 8/255, min-min UDP no more than noise); this
repository's own few-shot study has not yet passed its controls, so it has chosen nothing
(docs/efficacy.md). The only place version 2's method is written: change this dict to change it."""

SHIPPED_SURROGATE = "taef2"
"""The name of the latent pair shipped in the package (``--surrogate taef2``; ``bundled`` is an alias)."""
SHIPPED_SURROGATE_NAMES = ("taef2", "bundled")
PIXEL_SURROGATE = "pixel"
"""``--surrogate pixel`` on the command line: the built-in pixel surrogate fitted on the data (0.2's
default, measured not to protect; docs/efficacy.md)."""

Objective = Literal["unlearnable", "adversarial", "encoder", "matching", "sds", "aspl", "ace"]
EncoderTarget = Literal["away", "pattern"]
EncoderReduction = Literal["mean", "sum"]
TimestepSchedule = Literal["uniform", "eudp", "snr", "range"]
TimestepMode = Literal["sample", "weight"]
Dtype = Literal["float32", "float16", "bfloat16"]
Autocast = Literal["auto", "off", "bfloat16", "float16"]
Switch = Literal["auto", "on", "off"]
FitPgdScope = Literal["all", "next_round"]
Engine = Literal["pgd", "generator", "generator+pgd"]
EOT_NAMES = ("blur", "resize", "jpeg", "noise")  # method/eot.py implements them
PRESET_NAMES = ("advdm", "photoguard", "mist", "mist_w1", "mist2", "sds", "aspl", "metacloak", "udp", "eudp")  # method/presets.py
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")  # diffusers DDPMScheduler's

# Fields that change where or how fast a job runs but not what it computes (up to
# floating-point rounding on another device). They are left out of the hash so a
# job moved from a laptop to a GPU box keeps its identity.
RUNTIME_FIELDS = frozenset({"device", "batch_size", "gradient_checkpointing", "batch_pixels", "autocast",
                            "channels_last", "torch_compile"})

# Fields added after config version 1 shipped, with their defaults. While a field is at its default
# it is left out of the hash, so adding a field never changes the identity of an existing job
# (shard jobs resume across an upgrade instead of asking for --overwrite).
ADDED_FIELDS: dict[str, Any] = {"eot": "", "preset": None, "fit_pgd_scope": "all", "encoder_reduction": "mean",
                                "engine": "pgd", "generator": None, "generator_pgd_steps": 5}
ENGINE_FIELDS = ("generator", "generator_pgd_steps")
"""Fields read only by the generator engines: left out of the hash while ``engine='pgd'`` (they change nothing)."""


class ConfigError(ValueError):
    """An impossible or inconsistent configuration value."""


def parse_epsilon(value: str | float | int) -> float:
    """Read an L-inf budget as a fraction of the 0-1 pixel range.

    ``"8/255"`` -> 8/255, ``0.03`` -> 0.03, ``"8"`` or ``8`` -> 8/255 (an integer of
    at least 1 is read as grey levels, since a budget of 100 % is never meant).
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"epsilon={value!r}: a {type(value).__name__} is not a budget; write a number such as "
                          "8/255, 0.0314 or 8 (grey levels)")
    if isinstance(value, str):
        text = value.strip()
        if "/" in text:
            num, _, den = text.partition("/")
            try:
                return float(num) / float(den)
            except (ValueError, ZeroDivisionError) as exc:
                raise ConfigError(f"epsilon {value!r} is not a fraction like '8/255'") from exc
        try:
            value = float(text)
        except ValueError as exc:
            raise ConfigError(f"epsilon {value!r} is not a number or a fraction like '8/255'") from exc
    value = float(value)
    if value >= 1.0 and float(value).is_integer():
        return value / 255.0
    return value


@dataclass(frozen=True)
class ProtectionConfig:
    """How to protect images. See METHOD.md in the repository for each choice.

    Defaults are provisional until the evaluation (docs/efficacy.md) measures them.
    """

    # --- budget and PGD -------------------------------------------------------
    epsilon: float = 8 / 255
    """L-inf budget on the 0-1 scale; checked on the final uint8 pixels."""
    steps: int = 40
    """PGD iterations per image in the transform."""
    alpha: float | None = None
    """PGD step size; ``None`` means epsilon / 8."""
    random_start: bool = False
    """Start PGD uniformly in the epsilon ball instead of at zero (always on for
    ``objective='encoder'`` with ``encoder_target='away'``, whose gradient vanishes at zero)."""
    objective: Objective = "unlearnable"
    """``unlearnable``: min-min (error-minimising, surrogate co-trained in fit).
    ``adversarial``: max (error-maximising) against a frozen surrogate.
    ``encoder``: latent surrogates only; no denoiser, only the VAE-encoder term below.
    ``matching``: gradient matching (Witches' Brew-style): delta such that a training step on
    x + delta moves the surrogate *up* the clean-data loss (see objectives.py).
    ``sds``: SDS(-) (Xue et al., ICLR 2024): *minimise* the score-distillation loss, whose gradient
    skips the denoiser's Jacobian (only the encoder is back-propagated; latent surrogates).
    ``aspl``: Anti-DreamBooth's ASPL: fit alternates a copy of the surrogate fine-tuned on the clean
    images with PGD against it and training on the perturbed ones; the transform maximises the
    loss of that clean-fine-tuned copy (as ``adversarial``).
    ``ace``: Mist v2 / ACE (Zheng et al. 2023; latent surrogates): *minimise* ||eps_theta(z_t, t) - z_target||^2,
    the denoiser's output pulled toward the latent of the target pattern (``target_image``), so a model
    fine-tuned on the images learns to put that pattern into what it draws."""

    # --- latent surrogates (Stable Diffusion, AutoencoderKL + UNet) ----------
    encoder_weight: float = 0.0
    """Weight of the encoder term added to a denoising objective (latent surrogates only):
    it pushes E(x + delta) away from E(x) (or toward a pattern's latent, see
    ``encoder_target``), as PhotoGuard / Mist do. ``objective='encoder'`` uses it alone."""
    encoder_target: EncoderTarget = "away"
    """``away``: maximise ||E(x+delta) - E(x)||; ``pattern``: minimise ||E(x+delta) - E(target)||."""
    encoder_reduction: EncoderReduction = "mean"
    """How the encoder term's squared distance is reduced over latent elements: ``mean`` (ours), or
    ``sum`` (Mist's released code, ``nn.MSELoss(reduction="sum")``, so its weight against the
    denoising loss grows with the latent's size, as published)."""
    target_image: str | None = None
    """Image file whose latent is the target of ``encoder_target='pattern'``; ``None`` uses a
    built-in high-contrast pattern (see udp_datasets.latent.target_pattern)."""
    prompt: str | None = None
    """Text condition for a text-conditioned surrogate (Stable Diffusion), e.g. "a photo of sks
    person"; ``{caption}`` is replaced by the sample's ``caption_column`` value."""
    caption_column: str | None = None
    """Column holding per-image captions for a text-conditioned surrogate."""
    fit_lora_rank: int = 0
    """``unlearnable`` fit of a latent surrogate: 0 fine-tunes the whole UNet, r > 0 trains
    LoRA adapters of rank r (peft) on its attention projections and merges them on save."""

    # --- timesteps (UDP vs EUDP) ---------------------------------------------
    timesteps: TimestepSchedule = "eudp"
    gamma: float = 1.0
    """EUDP exponent: p(t) proportional to sqrt(alpha_bar_t) ** gamma."""
    t_min: int = 0
    t_max: int | None = None
    """Inclusive bounds for ``timesteps='range'`` (``None`` = last timestep). At the defaults (0 to the
    last) a range is every timestep, so ``range`` draws exactly what ``uniform`` draws: set a bound."""
    snr_clip: float = 5.0
    """Upper clip of the SNR weight for ``timesteps='snr'``."""
    timestep_mode: TimestepMode = "sample"
    """``sample`` draws t from p(t); ``weight`` draws t uniformly and weights the loss by p(t)."""
    noise_draws: int = 1
    """(t, noise) draws averaged per PGD step (expectation over the forward process)."""
    preset: str | None = None
    """The named method this config was made from (``udp_datasets.method.presets``: advdm, photoguard,
    mist, mist_w1, mist2, sds, aspl, metacloak, udp, eudp); recorded for provenance, the fields themselves decide."""
    eot: str = ""
    """Expectation over transformations: comma list of ``blur``, ``resize``, ``jpeg``, ``noise``; each
    PGD step passes every image through one of them, drawn at random (see method/eot.py), so the
    perturbation survives them. Empty: off."""

    # --- engine: how the perturbation is computed ------------------------------
    engine: Engine = "pgd"
    """``pgd``: ``steps`` PGD steps per image (the default). ``generator``: one forward pass of a trained
    perturbation generator G, delta = epsilon * tanh(G(x)) (method/generator.py). ``generator+pgd``: G's
    output as the start of ``generator_pgd_steps`` PGD steps. Part of the hash unless ``pgd``."""
    generator: str | None = None
    """Folder of the generator's weights (``udp-datasets train-generator``); ``None``: the one shipped in the
    package (``photoguard``, trained against that preset through TAEF2)."""
    generator_pgd_steps: int = 5
    """PGD steps after the generator with ``engine='generator+pgd'`` (``steps`` stays PGD's own count)."""

    seed: int = 0

    # --- surrogate ------------------------------------------------------------
    surrogate: str | None = None
    """Local directory or Hub id of a diffusers UNet2DModel (+ scheduler); ``None`` builds
    the built-in architecture, which :meth:`Protector.fit` trains on the data."""
    surrogate_revision: str | None = None
    surrogate_arch: str = "tiny"
    """Built-in architecture used when ``surrogate`` is ``None`` (see surrogate.ARCHITECTURES)."""
    resolution: int = 32
    """Side length the built-in surrogate works at; images are resized for its forward pass
    only, the perturbation always lives at the image's own resolution."""
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    """Noise schedule of the built-in surrogate (diffusers DDPMScheduler names)."""

    # --- fit (surrogate training) --------------------------------------------
    fit_rounds: int = 10
    fit_surrogate_steps: int = 40
    """Optimizer steps on the surrogate per round."""
    fit_pgd_steps: int = 10
    """PGD steps on the fit subset's perturbations per round (unlearnable only)."""
    fit_lr: float = 2e-4
    fit_batch_size: int = 32
    fit_max_samples: int = 10_000
    fit_stop_loss: float = 0.0
    """Stop co-training early once the surrogate loss on x+delta falls below this (0 = never)."""
    fit_pgd_scope: FitPgdScope = "all"
    """Which fit images' perturbations each ``unlearnable`` round's PGD updates: ``all``, or only those
    the ``next_round``'s training batches will draw (an image is updated before each round that trains
    on it, and its perturbation is kept in between), which bounds a round's PGD by
    ``fit_surrogate_steps`` x ``fit_batch_size`` images instead of the fit subset's size; the last
    round, which no training follows, then runs none (docs/performance.md, "Fit")."""
    fit_pool: int = 1
    """Surrogates at this many training stages (evenly spaced over the fit rounds, the last is
    the final one); PGD cycles through them so the effect holds along a victim's whole
    training run (MetaCloak-style pool). 1 = the final surrogate only."""
    clusters: int = 0
    """``unlearnable`` only: k-means the fit images into this many clusters and co-train one
    perturbation *shared* per cluster (a shortcut simple enough for a victim to learn first,
    like class-wise unlearnable noise); the transform starts each image from its cluster's
    perturbation and refines it with ``steps`` PGD steps. 0 = sample-wise only."""

    # --- runtime (excluded from the hash) ------------------------------------
    batch_size: int = 16
    device: str = "auto"
    dtype: Dtype = "float32"
    """Precision of the frozen surrogate in the transform (float16 / bfloat16 on GPUs)."""
    gradient_checkpointing: bool = False
    """Trade compute for memory in the surrogate's UNet / VAE (large Stable Diffusion images)."""
    batch_pixels: int = 0
    """Pixel budget of one transform batch (the sum of height x width of its images), which bounds
    its memory; images of different sizes share batches up to it. 0 = auto, from the device's
    memory (docs/performance.md). An image over the budget on its own is quarantined, by name."""
    autocast: Autocast = "auto"
    """Mixed precision of the transform's forward and backward passes: ``off``, ``bfloat16``,
    ``float16``, or ``auto`` (per device and surrogate, see docs/performance.md)."""
    channels_last: Switch = "auto"
    """NHWC memory layout for the surrogate's convolutions (``auto``: see docs/performance.md)."""
    torch_compile: bool = False
    """``torch.compile`` the surrogate's networks for the transform (pays off only on long jobs)."""

    version: int = CONFIG_VERSION
    config_version: int = DEFAULTS_VERSION
    """Which generation of defaults the config was made under (:data:`DEFAULTS_VERSION`): 2 for a new
    config, 1 for a file or job record without the field (0.1-0.2). Left out of :meth:`hash`: the fields
    decide what a job computes, and :func:`apply_version_defaults` writes version 2's choices into them,
    so a version-1 job keeps its hash and is still verified."""

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field, the value and the fix."""
        _check_types(self)
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigError(f"beta_schedule={self.beta_schedule!r} is not one of {list(BETA_SCHEDULES)}")
        _check_device(self.device)
        _choice("objective", self.objective, Objective)
        _choice("timesteps", self.timesteps, TimestepSchedule)
        _choice("timestep_mode", self.timestep_mode, TimestepMode)
        _choice("dtype", self.dtype, Dtype)
        _choice("encoder_target", self.encoder_target, EncoderTarget)
        _choice("encoder_reduction", self.encoder_reduction, EncoderReduction)
        _choice("autocast", self.autocast, Autocast)
        _choice("channels_last", self.channels_last, Switch)
        _choice("fit_pgd_scope", self.fit_pgd_scope, FitPgdScope)
        _choice("engine", self.engine, Engine)
        _non_negative_int("batch_pixels", self.batch_pixels)
        if not isinstance(self.torch_compile, bool):
            raise ConfigError(f"torch_compile={self.torch_compile!r} must be true or false")
        if not isinstance(self.encoder_weight, (int, float)) or not math.isfinite(self.encoder_weight) \
                or self.encoder_weight < 0:
            raise ConfigError(f"encoder_weight={self.encoder_weight!r} must be a finite number >= 0")
        if not isinstance(self.epsilon, (int, float)) or not math.isfinite(self.epsilon):
            raise ConfigError(f"epsilon must be a finite number, got {self.epsilon!r}")
        if not 0 < self.epsilon <= 1:
            raise ConfigError(
                f"epsilon={self.epsilon!r} is outside (0, 1]; it is a fraction of the pixel "
                "range, e.g. 8/255 = 0.0314 (on the CLI write --epsilon 8/255)"
            )
        if self.budget_levels < 1:
            raise ConfigError(
                f"epsilon={self.epsilon:.5f} rounds to {self.budget_levels} grey levels: the "
                "perturbation would vanish when saved as 8-bit; use at least 1/255"
            )
        for name in ("steps", "generator_pgd_steps", "noise_draws", "fit_pool", "num_train_timesteps",
                     "fit_batch_size", "fit_max_samples", "batch_size", "resolution"):
            _positive_int(name, getattr(self, name))
        for name in ("fit_rounds", "fit_surrogate_steps", "fit_pgd_steps", "t_min", "seed", "fit_lora_rank",
                     "clusters"):
            _non_negative_int(name, getattr(self, name))
        if self.clusters and self.objective != "unlearnable":
            raise ConfigError(f"clusters={self.clusters} shares error-minimising noise: it needs "
                              f"objective='unlearnable' (got {self.objective!r})")
        if self.fit_lora_rank and (self.fit_pool > 1 or self.objective == "matching"):
            raise ConfigError("fit_pool > 1 and objective='matching' keep full-weight snapshots; use "
                              "fit_lora_rank=0 with them")
        if self.preset is not None and self.preset not in PRESET_NAMES:
            raise ConfigError(f"preset={self.preset!r} is not one of {list(PRESET_NAMES)}")
        if not isinstance(self.eot, str):
            raise ConfigError(f"eot={self.eot!r} must be a comma list such as 'blur,jpeg' (or '' for off)")
        unknown = [n for n in self.eot_transforms if n not in EOT_NAMES]
        if unknown:
            raise ConfigError(f"eot has unknown transform(s) {unknown}; choose from {list(EOT_NAMES)}")
        if self.alpha is not None and not (0 < self.alpha <= 1):
            raise ConfigError(f"alpha={self.alpha!r} must be in (0, 1] (a step on the 0-1 pixel scale)")
        if self.gamma < 0:
            raise ConfigError(f"gamma={self.gamma!r} must be >= 0 (0 gives plain uniform UDP)")
        if self.snr_clip <= 0:
            raise ConfigError(f"snr_clip={self.snr_clip!r} must be > 0")
        if self.fit_lr <= 0:
            raise ConfigError(f"fit_lr={self.fit_lr!r} must be > 0")
        if self.t_max is not None:
            _non_negative_int("t_max", self.t_max)
            if self.t_max < self.t_min:
                raise ConfigError(f"t_max={self.t_max} is below t_min={self.t_min}")
            if self.t_max >= self.num_train_timesteps:
                raise ConfigError(
                    f"t_max={self.t_max} must be < num_train_timesteps={self.num_train_timesteps}")
        if self.t_min >= self.num_train_timesteps:
            raise ConfigError(
                f"t_min={self.t_min} must be < num_train_timesteps={self.num_train_timesteps}")
        if self.resolution % 4:
            raise ConfigError(f"resolution={self.resolution} must be a multiple of 4 (UNet downsampling)")
        if self.config_version not in (1, 2):
            raise ConfigError(f"config_version={self.config_version!r} must be 1 (the defaults of 0.1-0.2) or 2 "
                              "(0.3's)")
        if self.version != CONFIG_VERSION:
            raise ConfigError(
                f"config version {self.version} is not supported by this release "
                f"(expects {CONFIG_VERSION})")

    # --------------------------------------------------------------- derived
    @property
    def budget_levels(self) -> int:
        """The budget in 8-bit grey levels that every output pixel is checked against."""
        return int(round(self.epsilon * 255))

    @property
    def eot_transforms(self) -> tuple[str, ...]:
        """The EOT transforms as a tuple (``eot`` is a comma list so that it is one CLI flag)."""
        return tuple(n.strip() for n in self.eot.split(",") if n.strip())

    @property
    def step_size(self) -> float:
        return self.alpha if self.alpha is not None else self.epsilon / 8

    # ---------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProtectionConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        data = dict(data)
        data.setdefault("config_version", 1)  # written before 0.3: the defaults it was made under are 0.2's
        if "epsilon" in data:
            data["epsilon"] = parse_epsilon(data["epsilon"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str, source: str = "the config") -> "ProtectionConfig":
        return cls.from_dict(_json_mapping(text, source))

    @classmethod
    def from_file(cls, path: str | Path) -> "ProtectionConfig":
        """Load JSON or YAML (by extension). YAML is read with ``yaml.safe_load``: tags such as
        ``!!python/object/apply`` are refused, nothing in the file is ever executed. A file without
        ``config_version`` reads as version 1 (see :data:`DEFAULTS_VERSION`)."""
        return cls.from_dict(cls._read_mapping(Path(path)))

    @staticmethod
    def _read_mapping(path: Path) -> dict[str, Any]:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
        if path.suffix.lower() not in {".yaml", ".yml"}:
            return _json_mapping(text, str(path))
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not plain YAML ({' '.join(str(exc).split())}); write the fields as "
                              "plain values (tags such as !!python/... are refused, nothing is executed)") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
        return data

    def replace(self, **changes: Any) -> "ProtectionConfig":
        return dataclasses.replace(self, **changes)

    def hash(self) -> str:
        """Stable content hash of what the job computes (runtime fields excluded)."""
        payload = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS and k != "config_version"
                   and not (k in ADDED_FIELDS and v == ADDED_FIELDS[k])
                   and not (k in ENGINE_FIELDS and self.engine == "pgd")}
        canon = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(ProtectionConfig)


def _check_types(config: "ProtectionConfig") -> None:
    """Every field against its declared type (so a wrong type is a ConfigError, never a TypeError
    later): a bool is not a number, a number is not a string, a float field takes an int."""
    for f in fields(config):
        value, tp = getattr(config, f.name), _field_types()[f.name]
        if not _is_instance(value, tp):
            hint = " (a bool is not a number here)" if isinstance(value, bool) else ""
            raise ConfigError(f"{f.name}={value!r} (of type {type(value).__name__}){hint} must be {_type_text(tp)} "
                              f"(fix it in the config file, or with --{f.name.replace('_', '-')})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name}={value!r} must be a finite number")


def _is_instance(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in get_args(tp))
    if origin is Literal:
        return isinstance(value, str) and value in get_args(tp)
    if tp is type(None):
        return value is None
    if tp is bool or tp is str:
        return isinstance(value, tp)
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    return True


def _type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_text(arg) for arg in get_args(tp))
    if origin is Literal:
        return f"one of {list(get_args(tp))}"
    return {type(None): "null (none)", bool: "true or false", int: "a whole number", float: "a number",
            str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _check_device(device: str) -> None:
    if device in ("auto", "cpu"):
        return
    import torch

    try:
        torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device={device!r} is not a device torch knows ({exc}); use auto, cpu, cuda, cuda:N, "
                          "mps or xpu") from exc


def _choice(name: str, value: Any, literal: Any) -> None:
    options = get_args(literal)
    if value not in options:
        raise ConfigError(f"{name}={value!r} is not one of {list(options)}")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name}={value!r} must be an integer >= 1")


def _non_negative_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name}={value!r} must be an integer >= 0")


def _json_mapping(text: str, source: str) -> dict[str, Any]:
    """The mapping of config fields a JSON text holds; a :class:`ConfigError` naming ``source`` otherwise."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of config fields (a JSON object), got {type(data).__name__}")
    return data


def apply_version_defaults(config: ProtectionConfig, latent: bool,
                           explicit: typing.Collection[str] | None = None) -> ProtectionConfig:
    """``config`` with the defaults of its ``config_version`` for a latent (or pixel) surrogate.

    Version 1, a pixel surrogate, or a config whose method is chosen (made from a preset, or with
    ``objective`` in ``explicit``): unchanged. Otherwise, version 2 on a latent surrogate: every field of
    :data:`LATENT_DEFAULTS_V2` that is not in ``explicit`` (the fields the user set; ``None``: those that
    differ from their dataclass default) takes its version-2 value. The result holds the values
    themselves, so applying it twice changes nothing.
    """
    if explicit is None:
        explicit = {f.name for f in fields(config) if getattr(config, f.name) != f.default}
    if config.config_version < 2 or not latent or config.preset is not None or "objective" in explicit:
        return config
    changes = {k: v for k, v in LATENT_DEFAULTS_V2.items() if k not in explicit}
    return config.replace(**changes) if changes else config


def default_config(**fields: Any) -> ProtectionConfig:
    """The config ``udp-datasets protect SRC DST`` runs with no flags, for Python: version 2's method on the
    shipped latent pair, with ``fields`` set over it (a field you set is never replaced by a version-2
    value; setting ``objective`` or ``preset`` chooses the method yourself).

    Why: ``ProtectionConfig()`` is the dataclass defaults (no surrogate, so the pixel fit, the combination
    measured not to protect); a Python user should reach the CLI's default in one call, not by knowing
    :func:`apply_version_defaults`. Another surrogate: ``apply_version_defaults(ProtectionConfig(surrogate=...),
    latent=...)``, since only loading it tells whether it is latent."""
    if "surrogate" in fields:
        raise ConfigError("default_config() is the shipped pair's (surrogate='taef2'); for another surrogate use "
                          "apply_version_defaults(ProtectionConfig(surrogate=...), latent=True or False)")
    return apply_version_defaults(ProtectionConfig(surrogate=SHIPPED_SURROGATE, **fields), latent=True,
                                  explicit=set(fields))


def config_mapping(path: str | Path) -> dict[str, Any]:
    """The fields a config file sets (JSON or YAML), as written: what :meth:`ProtectionConfig.from_file`
    reads, without the defaults (the CLI needs to know which fields a file sets)."""
    return ProtectionConfig._read_mapping(Path(path))


def config_fields() -> list[dataclasses.Field]:
    """The public fields, in declaration order (the CLI builds one flag per field)."""
    return [f for f in fields(ProtectionConfig) if f.name != "version"]

