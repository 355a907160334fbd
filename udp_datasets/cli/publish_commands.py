"""``publish`` and ``verify``: the Hub side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .exit_codes import EXIT_FAILED, EXIT_OK, error_exit_code


def _sign_key(args: argparse.Namespace) -> bytes | None:
    from ..records.signing import read_key

    return read_key(args.sign_key) if getattr(args, "sign_key", None) else None


def cmd_publish(args: argparse.Namespace) -> int:
    from ..publish.hub import PublishError, PublishRefused, publish

    try:
        result = publish(args.dir, args.repo_id, private=args.private, revision=args.revision,
                         commit_message=args.commit_message, create_pr=args.create_pr, source=args.source,
                         source_split=args.source_split, license=args.license, pretty_name=args.pretty_name,
                         eval_report=args.eval_report, max_shard_size=args.max_shard_size,
                         staging_dir=args.staging_dir, allow_failed_shards=args.allow_failed_shards,
                         sign_key=_sign_key(args))
    except PublishRefused as exc:  # its status and message come from the one table (cli.app's main)
        print(exc.report.format(args.max_listed))
        raise
    except (OSError, ValueError) as exc:  # a folder that cannot be read, a bad argument: the command's fault
        if error_exit_code(exc) is None:
            raise PublishError(str(exc)) from exc
        raise
    print(f"published   {result.report.verified} verified images -> {result.url}")
    print(f"revision    {result.revision or 'main'} (commit {result.commit})")
    if result.pr_url:
        print(f"pull request {result.pr_url}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from ..publish.hub import verify

    report = verify(args.target, source=args.source, source_split=args.source_split,
                    image_column=args.image_column, sign_key=_sign_key(args),
                    allow_failed_shards=args.allow_failed_shards)
    print(report.format(args.max_listed))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return EXIT_OK if report.ok else EXIT_FAILED


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``publish`` and ``verify`` subcommands."""
    p = sub.add_parser("publish", help="verify a protected folder and push it to the Hugging Face Hub")
    p.add_argument("dir", help="output folder of `protect` (Arrow, image folder, tar or Parquet shards)")
    p.add_argument("repo_id", help="dataset repo, namespace/name (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo private (refused if it is public)")
    p.add_argument("--revision", help="branch to commit to (created from main if missing)")
    p.add_argument("--commit-message")
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--source", help="the clean source: also check each image's L-inf against it")
    p.add_argument("--source-split")
    p.add_argument("--license", help="card license (default: the source card's, when known)")
    p.add_argument("--pretty-name")
    p.add_argument("--eval-report", help="report.json of `udp-datasets evaluate` to show in the card")
    p.add_argument("--max-shard-size", default="500MB", help="Parquet shard size for Arrow folders")
    p.add_argument("--staging-dir", help="where the upload is staged (default: the temp folder)")
    p.add_argument("--max-listed", type=int, default=20, help="samples listed per category on failure")
    p.add_argument("--sign-key", help="key file: the job record's signature (protect --sign-key) must hold")
    p.add_argument("--allow-failed-shards", action="store_true",
                   help="publish a shard job that has failed shards (refused otherwise); the card lists them")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("verify", help="re-hash a protected folder or Hub dataset against its manifest")
    p.add_argument("target", help="folder, or Hub dataset REPO_ID[@revision]")
    p.add_argument("--source", help="the clean source: measure each image's L-inf against it")
    p.add_argument("--source-split")
    p.add_argument("--image-column", help="image column of a local folder (default: from the job record)")
    p.add_argument("--json", help="also write the full report as JSON to this file")
    p.add_argument("--max-listed", type=int, default=20, help="samples listed per category")
    p.add_argument("--allow-failed-shards", action="store_true",
                   help="do not fail a job whose record lists failed shards (their samples are missing)")
    p.add_argument("--sign-key", help="key file: the job record's signature (protect --sign-key) must hold")
    p.set_defaults(func=cmd_verify)
