"""`unicorn build | plan | seeds`: the recipe flags every build-shaped command shares, and those commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def build_parser(sub: Any) -> None:
    b = sub.add_parser("build", help="build (or resume) a dataset folder from a recipe")
    b.add_argument("--out", required=True, help="the dataset folder to write (what gets pushed to the Hub)")
    recipe_flags(b)
    b.add_argument("--overwrite", action="store_true", help="replace a build made with other settings")
    b.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (LLM2CLIP)")
    b.add_argument("--plan", help="a plan saved by `unicorn plan --save`: the manifest and card show plan vs build")
    s = sub.add_parser("seeds", help="print the seed plan of a recipe (sources, mix, vocabulary) without generating")
    recipe_flags(s)
    s.add_argument("--json", action="store_true", help="the plan as JSON")
    s.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (--balance encoder)")


def plan_parser(sub: Any) -> None:
    p = sub.add_parser("plan", help="predict a build's requests, tokens, time and cost from a small probe")
    recipe_flags(p)
    p.add_argument("--trust-remote-code", action="store_true", help="allow custom model code (LLM2CLIP)")
    p.add_argument("--probe", type=int, default=32, help="rows probed per LLM stage (default: 32)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--save", help="write the plan to this file, for `unicorn build --plan FILE`")
    p.add_argument("--gpu-hour-price", type=float, help="dollars per GPU hour (with --gpus)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs serving the build (default: 1)")
    p.add_argument("--price-per-mtok", help="IN,OUT: dollars per million prompt, completion tokens (APIs)")


def recipe_flags(b: argparse.ArgumentParser) -> None:
    """The flags that set recipe keys: shared by `build`, `plan` and `seeds` (the same plan either way)."""
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
    b.add_argument("--allow-worse-prior", action="store_true", default=None,
                   help="use a prior that lost to the mean shift on its validation pairs (refused otherwise)")
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
    ("allow_worse_prior", "--allow-worse-prior", "transfer.allow_worse_prior"),
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
    from unicorn_datasets.pipeline.interrupts import handle_signals
    from unicorn_datasets.pipeline.loop import build

    with handle_signals():  # Ctrl-C / SIGTERM: the build stops cleanly, `_report_error` says how to resume
        recipe = _recipe_from_args(args)
        build(recipe, out=args.out, overwrite=args.overwrite, trust_remote_code=args.trust_remote_code,
              plan=args.plan)
    return 0


def _prices(args: argparse.Namespace) -> Any:
    from unicorn_datasets.pipeline.plan import Prices

    if args.price_per_mtok and args.gpu_hour_price is not None:
        raise ValueError("give --price-per-mtok (APIs) or --gpu-hour-price (your GPUs), not both")
    if args.gpus < 1:
        raise ValueError(f"--gpus {args.gpus}: need at least 1")
    per_mtok = None
    if args.price_per_mtok:
        try:
            a, b = (float(x) for x in args.price_per_mtok.split(","))
        except ValueError:
            raise ValueError(f"--price-per-mtok {args.price_per_mtok}: need IN,OUT dollars, e.g. 0.35,0.40") from None
        per_mtok = (a, b)
    return Prices(gpu_hour=args.gpu_hour_price, gpus=args.gpus, per_mtok=per_mtok)


def cmd_plan(args: argparse.Namespace) -> int:
    from unicorn_datasets.dataset.atomic import write_text
    from unicorn_datasets.pipeline.plan import make_plan
    from unicorn_datasets.pipeline.plan_report import format_plan

    recipe, prices = _recipe_from_args(args), _prices(args)
    plan = make_plan(recipe, probe_rows=args.probe, prices=prices, trust_remote_code=args.trust_remote_code)
    if args.save:
        write_text(Path(args.save), json.dumps(plan, indent=2, default=str))
    print(json.dumps(plan, indent=2, default=str) if args.json else format_plan(plan))
    return 0
