"""`unicorn build | seeds | push | export | embed-images | report | gap-stats | prior`: the command line.

Every user-facing failure ends in one clear line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from unicorn_datasets import __version__

EXIT_USAGE, EXIT_INPUT, EXIT_BUILD = 2, 3, 4


def _build_parser(sub: Any) -> None:
    b = sub.add_parser("build", help="build (or resume) a dataset folder from a recipe")
    b.add_argument("--out", required=True, help="the dataset folder to write (what gets pushed to the Hub)")
    _recipe_flags(b)
    b.add_argument("--overwrite", action="store_true", help="replace a build made with other settings")
    b.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (LLM2CLIP)")
    s = sub.add_parser("seeds", help="print the seed plan of a recipe (sources, mix, vocabulary) without generating")
    _recipe_flags(s)
    s.add_argument("--json", action="store_true", help="the plan as JSON")
    s.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (--balance encoder)")


def _recipe_flags(b: argparse.ArgumentParser) -> None:
    """The flags that set recipe keys: shared by `build` and `seeds` (the same plan either way)."""
    b.add_argument("--recipe", default="demo", help="recipe name in builders/ or a .yaml path (default: demo)")
    b.add_argument("--limit", type=int, help="number of seeds")
    b.add_argument("--seed", type=int, help="build seed (sampling, selection, shuffles)")
    b.add_argument("--llm", help="LLM: a local folder, a .gguf file, a Hub id, or gemma3-270m-gguf (offline)")
    b.add_argument("--llm-endpoint", help="comma-separated OpenAI-compatible/TGI server URLs (server backend)")
    b.add_argument("--prompt-mode", choices=["chat", "completion"], help="chat template or few-shot completion")
    b.add_argument("--seeds", action="append",
                   help="your caption seeds: .txt/.jsonl/.csv/.tsv/.parquet, a dataset folder or a Hub id (streamed); "
                        "replaces the recipe's caption sources, keeps its domain sources; may be repeated")
    b.add_argument("--seed-column", help="column holding the seed captions (a list column gives one seed per item)")
    b.add_argument("--seed-group-column", help="keep one caption per value of this column (one caption per image)")
    b.add_argument("--seed-split", help="--seeds dataset: the split (default: train)")
    b.add_argument("--seed-config", help="--seeds Hub dataset: the configuration")
    b.add_argument("--seed-revision", help="--seeds Hub dataset: branch, tag or commit")
    b.add_argument("--encoder", help="Stage-3 encoder: CLIP/SigLIP/sentence-transformers folder, minilm, llm2clip")
    b.add_argument("--transfer", choices=["mean-shift", "c3", "none", "prior"], help="Stage-3 transfer method")
    b.add_argument("--prior", help="--transfer prior: a folder made by `unicorn prior train`")
    b.add_argument(
        "--renormalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="re-normalise after the mean shift (paper v2; the released code does not)",
    )
    b.add_argument("--noise-sigma", type=float, help="c3: Gaussian noise sigma")
    b.add_argument("--balance", action=argparse.BooleanOptionalAction, default=None,
                   help="select --limit seeds round-robin across semantic clusters (recipe: balance.enabled)")
    b.add_argument("--embedding-dtype", choices=["float16", "float32"])
    b.add_argument("--stages", help="comma-separated subset of captions,instruct,pretrain")
    b.add_argument("--shard-size", type=int, help="rows per shard (the unit of resume and of work per process)")
    b.add_argument("--batch-size", type=int, help="LLM batch size")
    b.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any recipe field, e.g. --set captions.min_words=40 (--set seeds=[...] replaces every source)",
    )


# build flags that set a recipe key: (flag, key path)
_FLAG_KEYS = (
    ("limit", "--limit", "limit"),
    ("seed", "--seed", "seed"),
    ("llm", "--llm", "llm.model"),
    ("prompt_mode", "--prompt-mode", "llm.prompt_mode"),
    ("batch_size", "--batch-size", "llm.batch_size"),
    ("shard_size", "--shard-size", "shard_size"),
    ("encoder", "--encoder", "transfer.encoder"),
    ("transfer", "--transfer", "transfer.method"),
    ("renormalize", "--renormalize", "transfer.renormalize"),
    ("noise_sigma", "--noise-sigma", "transfer.noise_sigma"),
    ("embedding_dtype", "--embedding-dtype", "transfer.embedding_dtype"),
    ("llm_endpoint", "--llm-endpoint", "llm.endpoints"),
    ("stages", "--stages", "stages"),
    ("balance", "--balance", "balance.enabled"),
    ("prior", "--prior", "transfer.prior"),
)


def _recipe_from_args(args: argparse.Namespace) -> Any:
    """The recipe file, then the flags, then `--set`s: validated once; an error names the flag or --set at fault."""
    from unicorn_datasets.recipe import RecipeError, load_recipe, parse_set, read_recipe

    overrides: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for attr, flag, key in _FLAG_KEYS:
        value = getattr(args, attr)
        if value is not None:
            overrides[key], origins[key] = value, f"{flag} {value}"
    if args.seeds:
        overrides["seeds"] = _seed_sources(args, read_recipe(args.recipe)[0].get("seeds"))
        origins["seeds"] = f"--seeds {' '.join(args.seeds)}"
    else:
        given = [f for f in _SEED_FLAGS if getattr(args, f[2:].replace("-", "_"))]
        if given:
            raise RecipeError(f"{given[0]} needs --seeds")
    for item in args.set:
        key, value = parse_set(item)
        overrides[key], origins[key] = value, f"--set {item}"
    return load_recipe(args.recipe, overrides, origins)


_SEED_FLAGS = ("--seed-column", "--seed-group-column", "--seed-split", "--seed-config", "--seed-revision")


def _seed_sources(args: argparse.Namespace, recipe_seeds: Any) -> list[Any]:
    """--seeds replaces the recipe's caption sources only: its domain sources (and their shares) stay."""
    keys = {"column": args.seed_column, "group_column": args.seed_group_column, "split": args.seed_split,
            "config": args.seed_config, "revision": args.seed_revision}
    mine = [{"kind": "captions", "path": p, **{k: v for k, v in keys.items() if v is not None}} for p in args.seeds]
    kept = [s for s in recipe_seeds or [] if isinstance(s, dict) and s.get("kind") == "domains"]
    return mine + kept


def cmd_seeds(args: argparse.Namespace) -> int:
    from unicorn_datasets.seeds.mix import plan_seeds

    plan = plan_seeds(_recipe_from_args(args), args.trust_remote_code)
    if args.json:
        for note in plan.notes:
            print(f"unicorn: note: {note}", file=sys.stderr)
        print(json.dumps(plan.to_json(), indent=2))
        return 0
    print(f"limit: {plan.limit if plan.limit is not None else 'none (every seed)'}")
    for s in plan.to_json()["sources"]:
        share = "-" if s["share"] is None else f"{s['share']:g}"
        line = f"{s['kind']:<9} {s['path']}: available {s['available']:,}, selected {s['selected']:,}, share {share}"
        if s["kind"] == "domains":
            line += (f"; {s['domains']} domains, {s['labels']:,} labels, {s['templates']} templates "
                     f"(at least {s['min_templates_per_domain']} per domain)")
        print(line)
    for note in plan.notes:
        print(f"note: {note}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from unicorn_datasets.pipeline.loop import build

    recipe = _recipe_from_args(args)
    build(recipe, out=args.out, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from unicorn_datasets.dataset.hub import push

    url = push(args.folder, args.repo, private=args.private, token=args.token, revision=args.revision)
    print(url)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from unicorn_datasets.dataset.export import export_bunny

    summary = export_bunny(args.folder, args.to, configs=args.configs.split(",") if args.configs else None,
                           chunk_size=args.chunk_size, allow_dim_mismatch=args.allow_dim_mismatch,
                           option_format=args.option_format)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_embed_images(args: argparse.Namespace) -> int:
    from unicorn_datasets.encoders import load_encoder
    from unicorn_datasets.transfer.embed_images import embed_images

    enc = load_encoder(args.encoder, device=args.device, trust_remote_code=args.trust_remote_code)
    summary = embed_images(
        args.source, enc, args.out, batch_size=args.batch_size, keep_path=args.keep_path, center=not args.no_center
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from unicorn_datasets.analysis.report import report

    print(json.dumps(report(args.folder, k=args.k, seed=args.seed), indent=2, default=str))
    return 0


def cmd_gap_stats(args: argparse.Namespace) -> int:
    from unicorn_datasets.dataset.layout import ARTIFACTS, TEXT_MEAN
    from unicorn_datasets.encoders import load_encoder
    from unicorn_datasets.transfer.gap import gap_report

    enc = load_encoder(args.encoder, device=args.device, trust_remote_code=args.trust_remote_code)
    mean = args.text_mean
    if mean is None and args.dataset:
        mean = str(Path(args.dataset) / ARTIFACTS / TEXT_MEAN)
    result = gap_report(args.pairs, enc, text_mean=mean, renormalize=args.renormalize, noise_sigma=args.noise_sigma)
    print(json.dumps(result, indent=2, default=str))
    return 0


def _prior_parser(sub: Any) -> None:
    pr = sub.add_parser("prior", help="train / evaluate a learned text->image-embedding prior (--transfer prior)")
    psub = pr.add_subparsers(dest="prior_command", required=True)
    tr = psub.add_parser("train", help="fit a prior on caption/image pairs")
    tr.add_argument("pairs", help=".parquet/.jsonl/dataset folder: caption + image_embedding (or image paths)")
    tr.add_argument("--encoder", required=True, help="the encoder of the builds that will use the prior")
    tr.add_argument("--out", required=True, help="the prior folder to write")
    tr.add_argument("--family", choices=["linear", "flow"], default="linear")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--val-fraction", type=float, default=0.1)
    tr.add_argument("--max-epochs", type=int, help="flow: epoch cap (early stopping usually ends sooner)")
    tr.add_argument("--patience", type=int, help="flow: epochs without a better validation loss before stopping")
    tr.add_argument("--hidden", type=int, help="flow: MLP width")
    tr.add_argument("--layers", type=int, help="flow: MLP depth")
    tr.add_argument("--lr", type=float, help="flow: AdamW learning rate")
    tr.add_argument("--steps", type=int, help="flow: Euler steps when sampling")
    tr.add_argument("--overwrite", action="store_true")
    ev = psub.add_parser("eval", help="held-out numbers of a prior beside none / mean-shift / c3")
    ev.add_argument("prior_dir")
    ev.add_argument("pairs", help="held-out pairs (same formats as train)")
    ev.add_argument("--encoder", help="default: the encoder the prior was trained for")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--noise-sigma", type=float, default=0.05, help="c3's noise sigma in the comparison")
    for p in (tr, ev):
        p.add_argument("--batch-size", type=int, default=32, help="encoder batch size")
        p.add_argument("--device", default="cpu")
        p.add_argument("--trust-remote-code", action="store_true")


def cmd_prior(args: argparse.Namespace) -> int:
    from unicorn_datasets.encoders import load_encoder
    from unicorn_datasets.prior.train import eval_prior, train_prior

    if args.prior_command == "train":
        hyper = {k: getattr(args, k) for k in ("max_epochs", "patience", "hidden", "layers", "lr", "steps")
                 if getattr(args, k) is not None}
        if hyper and args.family != "flow":
            raise ValueError(f"--{next(iter(hyper)).replace('_', '-')} applies to --family flow only")
        enc = load_encoder(args.encoder, device=args.device, trust_remote_code=args.trust_remote_code)
        result = train_prior(args.pairs, enc, args.out, family=args.family, seed=args.seed,
                             val_fraction=args.val_fraction, batch_size=args.batch_size, overwrite=args.overwrite,
                             **hyper)
    else:
        from unicorn_datasets.prior import load_prior

        spec = args.encoder or (load_prior(args.prior_dir).meta.get("encoder") or {}).get("encoder")
        if not spec:
            raise ValueError(f"{args.prior_dir} records no encoder; pass --encoder")
        enc = load_encoder(spec, device=args.device, trust_remote_code=args.trust_remote_code)
        result = eval_prior(args.prior_dir, args.pairs, enc, seed=args.seed, batch_size=args.batch_size,
                            noise_sigma=args.noise_sigma)
    print(json.dumps(result, indent=2, default=str))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unicorn", description="Build vision-language training data without images.")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    _build_parser(sub)
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
    rp = sub.add_parser("report", help="diversity/balance statistics of a built dataset folder")
    rp.add_argument("folder")
    rp.add_argument("--k", type=int, help="k-means clusters (default: sqrt(n/2) in [2, 100])")
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
    _prior_parser(sub)
    return p


COMMANDS = {
    "build": cmd_build,
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
    except Exception:
        if os.environ.get("UNICORN_DEBUG"):
            raise
        return _report_error(sys.exc_info()[1])


def _report_error(exc: BaseException | None) -> int:
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
    except KeyboardInterrupt:
        print("unicorn: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # unexpected: still one clear line and a non-zero exit; UNICORN_DEBUG=1 shows the trace
        print(f"unicorn: error: {type(e).__name__}: {e} (set UNICORN_DEBUG=1 for the traceback)", file=sys.stderr)
        return EXIT_BUILD


if __name__ == "__main__":
    sys.exit(main())
