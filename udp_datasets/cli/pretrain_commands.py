"""``pretrain``: train the latent UNet of a pair on a corpus, through the shipped TAEF2 encoder;
``train-generator``: train a perturbation generator (the ``generator`` engine) against a preset's objective."""

from __future__ import annotations

import argparse
import shlex

from ..evaluate.subjects import BUNDLED_CORPUS, GLYPH_CORPUS
from .exit_codes import EXIT_OK


def _corpus_and_command(args: argparse.Namespace) -> tuple[list, dict, str]:
    """The corpus of ``args`` (:func:`read_corpus`; no images or mixed sizes is a usage error, exit 2) and the
    command line recorded in the provenance."""
    from ..config import ConfigError
    from ..evaluate.subjects import read_corpus

    try:
        images, corpus = read_corpus(args.corpus, args.count, args.corpus_seed, args.size, args.corpus_mode)
    except ValueError as exc:  # no images, mixed sizes: a usage error (exit 2)
        raise ConfigError(str(exc)) from exc
    command = "udp-datasets " + " ".join(shlex.quote(a) for a in getattr(args, "argv", []))
    return images, corpus, command


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ..models.denoiser_training import TrainRecipe
    from ..models.pair_pretraining import PairRecipe, pretrain_pair

    images, corpus, command = _corpus_and_command(args)
    recipe = PairRecipe(train=TrainRecipe(steps=args.steps, learning_rate=args.learning_rate,
                                          batch_size=args.batch_size, warmup_steps=args.warmup_steps),
                        seed=args.seed, architecture=args.architecture, per_channel=not args.scalar_normalisation,
                        half=args.half)
    record = pretrain_pair(images, args.out, recipe, corpus=corpus, command=command, save_every=args.save_every,
                           overwrite=args.overwrite)
    print(f"latent pair written to {args.out} (weights sha256 {record['weights_sha256']}, final loss "
          f"{record['final_loss']:.4f})")
    print(f"protect with: udp-datasets protect SRC DST --surrogate {args.out}")
    return EXIT_OK


def cmd_train_generator(args: argparse.Namespace) -> int:
    from ..config import parse_epsilon
    from ..method.generator_training import GeneratorRecipe, train_generator

    images, corpus, command = _corpus_and_command(args)
    recipe = GeneratorRecipe(preset=args.preset, surrogate=args.surrogate, epsilon=parse_epsilon(args.epsilon),
                             eot=args.eot, steps=args.steps, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, width=args.width, seed=args.seed)
    record = train_generator(images, args.out, recipe, corpus=corpus, command=command, save_every=args.save_every,
                             overwrite=args.overwrite)
    print(f"generator written to {args.out} (weights sha256 {record['weights_sha256']}, {record['train_seconds']} s; "
          f"objective {record['loss_first_25']:.4g} -> {record['loss_last_25']:.4g})")
    print(f"protect with: udp-datasets protect SRC DST --engine generator --generator {args.out}")
    return EXIT_OK


def add_corpus_mode(p: argparse.ArgumentParser) -> None:
    """``--corpus-mode``, shared by every command that reads a corpus folder (one wording, one default)."""
    from ..evaluate.subjects import CORPUS_MODES

    p.add_argument("--corpus-mode", choices=CORPUS_MODES,
                   help="how a corpus FOLDER is read: crops (default: log-uniform crops of its images, as many as "
                        "the corpus count; made for photographs) or whole (each image's central square, at most "
                        "that many: for folders of whole objects or shapes, which a crop would cut apart)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    from ..config import PRESET_NAMES, SHIPPED_SURROGATE
    from ..models.denoiser_training import FEWSHOT_UNETS

    p = sub.add_parser("pretrain", help="train the latent UNet of a surrogate pair on your corpus (TAEF2 latents)")
    p.add_argument("corpus", help=f"folder of images (or any source protect reads), '{BUNDLED_CORPUS}' for the "
                   f"bundled photographs or '{GLYPH_CORPUS}' for the generated glyphs")
    p.add_argument("out", help="folder of the latent pair (read by --surrogate OUT); an interrupted run keeps "
                   "its checkpoint in OUT.partial/ and the same command resumes it")
    p.add_argument("--count", type=int, default=3000, help="corpus crops (default 3000)")
    p.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64: 8x8 latents)")
    p.add_argument("--corpus-seed", type=int, default=0, help="seed of the crops (default 0)")
    add_corpus_mode(p)
    p.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=20, help="seed of the UNet and of every training draw")
    p.add_argument("--architecture", choices=sorted(FEWSHOT_UNETS), default="fewshot-surrogate")
    p.add_argument("--scalar-normalisation", action="store_true",
                   help="one shift / scale for every latent channel (default: per channel)")
    p.add_argument("--half", action="store_true", help="store the weights in float16 (half the size)")
    p.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (default 100)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT, or an OUT.partial/ of another job")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train-generator", help="train a perturbation generator (--engine generator) against a "
                       "preset's objective on a corpus")
    p.add_argument("corpus", help=f"folder of images, '{BUNDLED_CORPUS}' for the bundled photographs or "
                   f"'{GLYPH_CORPUS}' for the generated glyphs")
    p.add_argument("out", help="folder of the generator (read by --generator OUT); an interrupted run keeps its "
                   "checkpoint in OUT.partial/ and the same command resumes it")
    p.add_argument("--preset", choices=PRESET_NAMES, required=True,
                   help="the method whose objective G is trained on (the loss PGD optimises for it)")
    p.add_argument("--surrogate", default=SHIPPED_SURROGATE, help=f"surrogate folder or Hub id (default: the "
                   f"shipped pair {SHIPPED_SURROGATE})")
    p.add_argument("--epsilon", default="8/255", help="L-inf budget G is trained at (default 8/255)")
    p.add_argument("--eot", default="", help="EOT transforms during training (comma list of blur, resize, jpeg, "
                   "noise; default off)")
    p.add_argument("--count", type=int, default=2000, help="corpus crops (default 2000)")
    p.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    p.add_argument("--corpus-seed", type=int, default=0, help="seed of the crops (default 0)")
    add_corpus_mode(p)
    p.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--width", type=int, default=24, help="channels of G's first level (default 24)")
    p.add_argument("--seed", type=int, default=0, help="seed of G's initial weights and of every training draw")
    p.add_argument("--save-every", type=int, default=25, help="checkpoint every N steps (default 25)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT, or an OUT.partial/ of another job")
    p.set_defaults(func=cmd_train_generator)
