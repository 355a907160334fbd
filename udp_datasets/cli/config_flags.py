"""Every :class:`ProtectionConfig` field as a flag: defaults < ``--config-file`` < flags."""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Callable

from ..config import ProtectionConfig, config_fields, parse_epsilon


def _flag_type(tp: Any) -> tuple[Callable[[str], Any] | None, list[Any] | None, bool]:
    """(converter, choices, is_bool) for a config field's type annotation."""
    args = typing.get_args(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        conv, choices, is_bool = _flag_type(inner[0])
        return (lambda s: None if s.lower() == "none" else conv(s)), choices, is_bool  # type: ignore[misc]
    if origin is typing.Literal:
        return str, list(args), False
    if tp is bool:
        return None, None, True
    return tp, None, False


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("protection config (override --config-file)")
    group.add_argument("--config-file", type=Path, help="JSON or YAML file of config fields")
    hints = typing.get_type_hints(ProtectionConfig)
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        conv, choices, is_bool = _flag_type(hints[f.name])
        if f.name == "epsilon":
            conv = parse_epsilon
        if is_bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS)
        else:
            group.add_argument(flag, dest=f.name, type=conv, choices=choices, default=argparse.SUPPRESS,
                               metavar=None if choices else f.name.upper())


def config_from_args(args: argparse.Namespace, base: ProtectionConfig | None = None) -> ProtectionConfig:
    """Defaults (or ``base``) < ``--config-file`` < ``--preset NAME``'s fields < the other flags.

    A ``preset`` inside a config file is only the record of a method's name (a saved config already
    holds its fields); the ``--preset`` flag applies the method, so ``--preset mist`` never runs the
    default objective under the name "mist"."""
    if getattr(args, "config_file", None):
        base = ProtectionConfig.from_file(args.config_file)
    base = base or ProtectionConfig()
    overrides = {f.name: getattr(args, f.name) for f in config_fields() if hasattr(args, f.name)}
    preset = overrides.pop("preset", None)
    if preset is not None:
        from ..method.presets import preset_config

        return preset_config(preset, base, **overrides)
    return base.replace(**overrides)


def explicit_fields(args: argparse.Namespace) -> set[str]:
    """The config fields the user chose: set in ``--config-file``, by a flag, or by ``--preset``'s method."""
    from ..config import config_mapping

    chosen = set(config_mapping(args.config_file)) if getattr(args, "config_file", None) else set()
    chosen |= {f.name for f in config_fields() if hasattr(args, f.name)}
    if getattr(args, "preset", None) is not None:
        from ..method.presets import PRESETS

        chosen |= set(PRESETS.get(args.preset, {}))
    return chosen


def pixel_surrogate_as_builtin(config: ProtectionConfig) -> ProtectionConfig:
    """``--surrogate pixel``: the built-in pixel surrogate fitted on the data (``surrogate=None``, no revision)."""
    from ..config import PIXEL_SURROGATE

    if config.surrogate == PIXEL_SURROGATE:
        return config.replace(surrogate=None, surrogate_revision=None)
    return config


def protect_config_from_args(args: argparse.Namespace) -> ProtectionConfig:
    """:func:`config_from_args` with the defaults of the config's ``config_version`` filled in.

    Version 2 (a new config; a file without ``config_version`` is version 1): no surrogate chosen means
    the shipped latent pair (``--surrogate taef2``), ``--surrogate pixel`` the built-in pixel surrogate
    fitted on the data (0.2's default); on a latent surrogate every field of
    ``config.LATENT_DEFAULTS_V2`` the user did not set takes its version-2 value (unless ``--preset`` or
    ``--objective`` chose a method). Version 1: exactly what 0.2 did (no surrogate = the pixel fit)."""
    from ..config import SHIPPED_SURROGATE, apply_version_defaults
    from ..models import surrogate_is_latent

    config = config_from_args(args)
    chosen = explicit_fields(args)
    if config.config_version >= 2 and "surrogate" not in chosen and config.surrogate is None:
        config = config.replace(surrogate=SHIPPED_SURROGATE)
    config = pixel_surrogate_as_builtin(config)
    latent = config.surrogate is not None and surrogate_is_latent(config.surrogate, config.surrogate_revision)
    return apply_version_defaults(config, latent, chosen)


# ------------------------------------------------------------------ commands
