"""`unicorn push | export | embed-images | report | gap-stats | prior`: the commands that work on what a build made."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


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

    if len(args.folders) > 2:
        raise ValueError(f"unicorn report takes one build folder, or two to compare; got {len(args.folders)}")
    if len(args.folders) == 2:
        from unicorn_datasets.analysis.compare import compare_builds

        result = compare_builds(*args.folders, k=args.k, encoder=args.encoder, embeddings=args.embeddings,
                                seed=args.seed)
    else:
        result = report(args.folders[0], k=args.k, encoder=args.encoder, embeddings=args.embeddings, seed=args.seed)
    print(json.dumps(result, indent=2, default=str))
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


def prior_parser(sub: Any) -> None:
    pr = sub.add_parser("prior", help="train / evaluate a learned text->image-embedding prior (--transfer prior)")
    psub = pr.add_subparsers(dest="prior_command", required=True)
    tr = psub.add_parser("train", help="fit a prior on caption/image pairs")
    tr.add_argument("pairs", help=".parquet/.jsonl/dataset folder: caption + image_embedding (or image paths)")
    tr.add_argument("--encoder", required=True, help="the encoder of the builds that will use the prior")
    tr.add_argument("--out", required=True, help="the prior folder to write")
    tr.add_argument("--family", default="linear",
                    help="linear, orthogonal, flow, a comma-separated list or all: each is fitted and compared with "
                         "the mean shift on the validation split; the best is saved (default: linear)")
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
        from unicorn_datasets.prior.train import families_of

        if hyper and "flow" not in families_of(args.family):
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
