"""Calibrate Stage 1's off-seed thresholds on real (seed, caption) pairs.

Input: a captions build made with both seed checks off, e.g.
    python build.py --recipe demo --limit 100 --stages captions --out /tmp/calib \
        --set captions.min_seed_overlap=0 --set captions.min_seed_cosine=0
For every threshold of `captions.min_seed_overlap` (content-word overlap) and `captions.min_seed_cosine`
(cosine with the recipe's text encoder) it prints the share of on-seed pairs (each caption with its own
seed) and of shuffled pairs (each caption with another row's seed) that the check accepts: a good
threshold keeps nearly all on-seed pairs and few shuffled ones.

    python bench/calibrate_seed_checks.py /tmp/calib --encoder minilm [--embedding sentence words]

`--embedding` (captions.seed_cosine_embedding) says how the cosine's texts are embedded: whole ("sentence")
or as the mean of their content words ("words"); each gets its own table, with the AUC of on-seed against
shuffled cosines and the CPU milliseconds per caption of embedding the captions (cold: empty word cache).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from unicorn_datasets.encoders import load_encoder
from unicorn_datasets.stages.captions import seed_overlap
from unicorn_datasets.stages.seed_check import SeedCosineCheck, seed_caption_cosine


def pairs(folder: Path) -> tuple[list[str], list[str]]:
    """(seeds, captions) of the accepted Stage-1 rows of a build folder (or of its finished shards, while the
    build is still running)."""
    files = sorted((folder / "captions").glob("*.parquet")) or sorted(folder.glob(".build/captions/part-*.parquet"))
    if not files:
        raise SystemExit(f"{folder} has no captions config: build it first (see this script's docstring)")
    rows = [r for f in files for r in pq.read_table(f, columns=["seed", "caption"]).to_pylist() if r["caption"]]
    return [r["seed"] for r in rows], [r["caption"] for r in rows]


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation with no fixed point: every caption meets another row's seed."""
    return (np.arange(n) + rng.integers(1, n)) % n if n > 1 else np.arange(n)


def table(name: str, on: np.ndarray, off: np.ndarray, thresholds: list[float]) -> str:
    lines = [f"| {name} >= | on-seed accepted | shuffled accepted |", "|---|---|---|"]
    for th in thresholds:
        lines.append(f"| {th:.2f} | {np.mean(on >= th):.1%} | {np.mean(off >= th):.1%} |")
    return "\n".join(lines)


def auc(on: np.ndarray, off: np.ndarray) -> float:
    """P(an on-seed pair scores above a shuffled one), ties counted half."""
    return float(np.mean(on[:, None] > off[None, :]) + 0.5 * np.mean(on[:, None] == off[None, :]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a built dataset folder with a captions config")
    ap.add_argument("--encoder", default="minilm", help="the recipe's transfer.encoder (default: minilm)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    ap.add_argument("--shuffles", type=int, default=5, help="shuffled pairings to average over")
    ap.add_argument("--overlap", type=float, default=0.25, help="min_seed_overlap of the combined row")
    ap.add_argument("--cosine", type=float, default=0.4, help="min_seed_cosine of the combined row")
    ap.add_argument("--embedding", nargs="+", default=["sentence", "words"], choices=["sentence", "words"],
                    help="captions.seed_cosine_embedding values to calibrate")
    args = ap.parse_args(argv)
    seeds, captions = pairs(args.folder)
    n = len(seeds)
    if n < 2:
        raise SystemExit(f"{args.folder}: {n} caption(s); need at least 2 to shuffle")
    rng = np.random.default_rng(args.seed)
    perms = [derangement(n, rng) for _ in range(args.shuffles)]
    enc = load_encoder(args.encoder)
    # the same numbers through the function the stage calls (a check of this script, not a second method)
    assert np.allclose(seed_caption_cosine(enc, seeds[:4], captions[:4]),
                       np.einsum("nd,nd->n", enc.encode_text(seeds[:4]), enc.encode_text(captions[:4])), atol=1e-5)
    print(f"{n} on-seed pairs, {n * args.shuffles} shuffled pairs ({args.shuffles} shuffles), encoder {args.encoder}")
    cos: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for embedding in args.embedding:
        check = SeedCosineCheck(enc, 0.0, embedding)  # the stage's own embedding and score
        s_emb = check.embed(seeds)
        t0 = time.process_time()
        c_emb = check.embed(captions)
        ms = (time.process_time() - t0) / n * 1000
        cos_on = np.array([check.score(s_emb[i], c_emb[i]) for i in range(n)])
        cos_off = np.array([check.score(s_emb[p[i]], c_emb[i]) for p in perms for i in range(n)])
        cos[embedding] = cos_on, cos_off
        print(f"\n### captions.seed_cosine_embedding: {embedding} (AUC {auc(cos_on, cos_off):.3f}; "
              f"{ms:.2f} ms CPU per caption{' from an empty word cache' if embedding == 'words' else ''})")
        print(f"score on-seed: min {cos_on.min():.3f} p5 {np.percentile(cos_on, 5):.3f} median "
              f"{np.median(cos_on):.3f}; shuffled: median {np.median(cos_off):.3f} p95 "
              f"{np.percentile(cos_off, 95):.3f} max {cos_off.max():.3f}\n")
        print(table("min_seed_cosine", cos_on, cos_off, [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]))
    cos_on, cos_off = cos[args.embedding[0]]
    ov_on = np.array([seed_overlap(s, c) for s, c in zip(seeds, captions)])
    ov_off = np.array([seed_overlap(seeds[j], c) for p in perms for j, c in zip(p, captions)])
    print()
    print(table("min_seed_overlap", ov_on, ov_off, [0.1, 0.2, 0.25, 0.34, 0.5, 0.67]))
    both_on = np.mean((ov_on >= args.overlap) & (cos_on >= args.cosine))
    both_off = np.mean((ov_off >= args.overlap) & (cos_off >= args.cosine))
    print(f"\nboth checks (overlap >= {args.overlap}, {args.embedding[0]} cosine >= {args.cosine}): "
          f"on-seed {both_on:.1%} accepted, shuffled {both_off:.1%} accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
