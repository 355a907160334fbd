"""``udp-datasets``: protect | fit | pretrain | train-generator | demo | config | evaluate | ablation | latent-ablation | evaluate-sd | publish | verify.

The parser is assembled from one module per area (``protect_commands``, ``evaluate_commands``,
``publish_commands``); this module only dispatches; errors become exit codes in ``exit_codes``.

Every :class:`ProtectionConfig` field is also a flag (``--epsilon 8/255``,
``--objective adversarial``, ``--random-start``...); flags override
``--config-file`` (JSON or YAML), which overrides the defaults.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from . import evaluate_commands, pretrain_commands, protect_commands, publish_commands
from .exit_codes import EXIT_FAILED, EXIT_OK, EXIT_QUARANTINED, EXIT_USAGE, run_reporting_errors
from .logs import configure_logging

logger = logging.getLogger("udp_datasets")

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_QUARANTINED", "EXIT_USAGE", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="udp-datasets", description="Make image datasets unlearnable for "
                                     "diffusion models (UDP / EUDP), publish and verify them, measure the effect.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    protect_commands.add_parsers(sub)
    evaluate_commands.add_parsers(sub)
    publish_commands.add_parsers(sub)
    pretrain_commands.add_parsers(sub)
    protect_commands.add_config_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # --num-processes re-launches with these
    configure_logging(args.verbose)
    return run_reporting_errors(f"udp-datasets {args.command}", lambda: args.func(args))
