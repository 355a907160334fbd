"""``protect``, ``fit``, ``demo`` and ``config``: the commands that make protected data."""

from __future__ import annotations

import argparse
import sys

from .config_flags import (add_config_arguments, config_from_args, pixel_surrogate_as_builtin,
                           protect_config_from_args)
from .exit_codes import EXIT_OK, EXIT_QUARANTINED, exit_code

DEFAULT_IMAGE_COLUMN = "image"


def cmd_protect(args: argparse.Namespace) -> int:
    from ..jobs.dataset_job import protect_dataset
    from ..records.signing import read_key
    from ..records.summary import format_summary
    from .launch import drop_columns, protect_shards, wants_shard_job

    config = protect_config_from_args(args)
    key = read_key(args.sign_key) if args.sign_key else None  # a bad key file fails before any work
    if wants_shard_job(args):  # shards, --format parquet, --num-processes, accelerate launch
        return protect_shards(args, config, sign_key=key)
    # the datasets path: no --image-column means "image", no --format means Arrow
    summary = protect_dataset(args.src, args.dst, config, split=args.split,
                              image_column=args.image_column or DEFAULT_IMAGE_COLUMN,
                              key_column=args.key_column, output_format=args.format or "arrow",
                              fit_output=args.fit_output, num_proc=args.num_proc,
                              overwrite=args.overwrite, drop_columns=drop_columns(args), sign_key=key)
    print(format_summary(summary))
    if args.format is None and is_image_folder(args.src):
        print(f"output      a datasets folder ({args.dst}/data, Arrow); for image files at the folder's own paths, "
              "run again with --format imagefolder")
    return exit_code(summary, args.allow_errors)


def is_image_folder(src: str) -> bool:
    """A local folder that is not a ``save_to_disk`` dataset: pictures, whose owner may expect pictures back
    (the default output is a datasets folder, which the summary then says)."""
    from ..sources.hf import is_saved_dataset
    from ..sources.paths import local_root

    root = local_root(src)
    return root is not None and not is_saved_dataset(root)


def cmd_fit(args: argparse.Namespace) -> int:
    from ..protector import Protector
    from ..sources import open_source
    from ..sources.paths import local_root

    config = pixel_surrogate_as_builtin(config_from_args(args))  # --surrogate pixel, as protect reads it
    ds = open_source(args.src, split=args.split)
    protector = Protector(config, image_column=args.image_column, image_root=local_root(args.src))
    result = protector.fit(ds, output_dir=args.out)
    last = result.history[-1] if result.history else {}
    print(f"fitted surrogate saved to {args.out} ({result.num_samples} images; last round {last})")
    print(f"protect with: udp-datasets protect SRC DST --surrogate {args.out} ...")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    check = None
    if args.evaluate:
        from .evaluate_commands import fewshot_cache_dir

        check = {"cache_dir": fewshot_cache_dir(args), "workers": args.workers}
    result = run_demo(args.out, quick=args.quick, evaluate=check)
    print(f"side-by-side picture: {result['picture']}")
    print(f"summary:              {result['summary_path']}")
    print(f"protected dataset:    {result['dataset']}")
    if check:
        found = result["evaluation"]
        erasure = ", ".join(f"{k} {'n/a' if v is None else f'{v:+.2f}'}" for k, v in found["erasure"].items())
        print(f"few-shot check:       {found['verdict']}")
        print(f"  erasure of '{found['subject']}' (1 = nothing learned, 0 = learned as from clean): {erasure}")
        print(f"  report: {found['report']}   samples: {found['samples_grid']}")
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    config = protect_config_from_args(args)  # what `protect` with these flags would run
    print(config.to_json())
    print(f"# hash {config.hash()}", file=sys.stderr)
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """The ``protect``, ``fit`` and ``demo`` subcommands."""
    p = sub.add_parser("protect", help="protect every image of a dataset")
    p.add_argument("src", help="image folder, save_to_disk folder, Hub dataset id, or shards: a .tar / "
                   ".parquet file, brace pattern ('data-{000000..000099}.tar'), URL or folder of them")
    p.add_argument("dst", help="output folder (created; must not exist unless --overwrite)")
    p.add_argument("--split", help="split to protect when SRC has several")
    p.add_argument("--image-column", help=f"image column (default: {DEFAULT_IMAGE_COLUMN}; shards and Parquet "
                   "output: the Image feature, else 'image', else the only binary column)")
    p.add_argument("--key-column", help="column of stable ids that seed per-sample randomness")
    p.add_argument("--drop-columns", help="columns to leave out of the output (comma list): a table with "
                   "image columns besides the protected one is refused unless they are dropped")
    p.add_argument("--format", choices=["arrow", "imagefolder", "parquet"],
                   help="arrow (default): save_to_disk folder in DST/data; imagefolder: PNG files + "
                   "metadata.jsonl; parquet: Parquet shards through the shard job")
    p.add_argument("--fit-output", help="where the fitted surrogate is saved (default: cache folder)")
    p.add_argument("--num-proc", type=int, help="worker processes for datasets.map (one per GPU)")
    p.add_argument("--num-processes", type=int, help="shard job: re-launch on N processes with accelerate")
    p.add_argument("--image-ext", help="shard job: tar member extensions that are images (comma list)")
    p.add_argument("--rows-per-shard", type=int, help="shard job: rows per output shard for a datasets SRC (default 10000)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--sign-key", help="key file: add an HMAC-SHA256 signature of the manifest digest to the job "
                   "record (check it with verify --sign-key)")
    p.add_argument("--allow-errors", action="store_true",
                   help=f"exit 0 even when images were quarantined (default exit {EXIT_QUARANTINED})")
    add_config_arguments(p)
    p.set_defaults(func=cmd_protect)

    p = sub.add_parser("fit", help="train the surrogate on a dataset and save it")
    p.add_argument("src")
    p.add_argument("out", help="folder for the fitted surrogate (diffusers DDPMPipeline layout)")
    p.add_argument("--split")
    p.add_argument("--image-column", default="image")
    add_config_arguments(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("demo", help="offline demo on photographs and faces shipped with scikit-image")
    p.add_argument("--out", default="udp-demo", help="output folder (default: ./udp-demo)")
    p.add_argument("--quick", action="store_true", help="smaller budget, for smoke tests")
    p.add_argument("--evaluate", action="store_true",
                   help="add a few-shot check: a victim fine-tuned on one structured subject, clean vs the default "
                        "method vs noise, with the study's controls (the shipped victim; minutes on 2 cores)")
    p.add_argument("--cache-dir", default=None, help="--evaluate: where the few-shot pretraining is kept (default: "
                                                     "the user cache, shared with `evaluate --regime fewshot`)")
    p.add_argument("--workers", type=int, default=2, help="--evaluate: fine-tunes run at once (default 2)")
    p.set_defaults(func=cmd_demo)


def add_config_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="print the resolved config as JSON")
    add_config_arguments(p)
    p.set_defaults(func=cmd_config)
