"""Calibrate Stage 1's off-seed thresholds on real (seed, caption) pairs.

Input: a captions build made with both seed checks off, e.g.
    python build.py --recipe demo --limit 100 --stages captions --out /tmp/calib \
        --set captions.min_seed_overlap=0 --set captions.min_seed_cosine=0
For every threshold of `captions.min_seed_overlap` (content-word overlap) and `captions.min_seed_cosine`
(cosine with the recipe's text encoder) it prints the share of on-seed pairs (each caption with its own
seed) and of shuffled pairs (each caption with another row's seed) that the check accepts: a good
threshold keeps nearly all on-seed pairs and few shuffled ones.

    python bench/calibrate_seed_checks.py /tmp/calib --encoder minilm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from unicorn_datasets.encoders import load_encoder
from unicorn_datasets.stages.captions import seed_overlap
from unicorn_datasets.stages.seed_check import seed_caption_cosine


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path, help="a built dataset folder with a captions config")
    ap.add_argument("--encoder", default="minilm", help="the recipe's transfer.encoder (default: minilm)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    ap.add_argument("--shuffles", type=int, default=5, help="shuffled pairings to average over")
    ap.add_argument("--overlap", type=float, default=0.25, help="min_seed_overlap of the combined row")
    ap.add_argument("--cosine", type=float, default=0.4, help="min_seed_cosine of the combined row")
    args = ap.parse_args(argv)
    seeds, captions = pairs(args.folder)
    n = len(seeds)
    if n < 2:
        raise SystemExit(f"{args.folder}: {n} caption(s); need at least 2 to shuffle")
    rng = np.random.default_rng(args.seed)
    perms = [derangement(n, rng) for _ in range(args.shuffles)]
    enc = load_encoder(args.encoder)
    s_emb, c_emb = enc.encode_text(seeds), enc.encode_text(captions)
    cos_on = np.einsum("nd,nd->n", s_emb, c_emb)
    cos_off = np.concatenate([np.einsum("nd,nd->n", s_emb[p], c_emb) for p in perms])
    # the same numbers through the function the stage calls (a check of this script, not a second method)
    assert np.allclose(seed_caption_cosine(enc, seeds[:4], captions[:4]), cos_on[:4], atol=1e-5)
    ov_on = np.array([seed_overlap(s, c) for s, c in zip(seeds, captions)])
    ov_off = np.array([seed_overlap(seeds[j], c) for p in perms for j, c in zip(p, captions)])
    print(f"{n} on-seed pairs, {len(cos_off)} shuffled pairs ({args.shuffles} shuffles), encoder {args.encoder}")
    print(f"cosine on-seed: min {cos_on.min():.3f} p5 {np.percentile(cos_on, 5):.3f} median {np.median(cos_on):.3f}; "
          f"shuffled: median {np.median(cos_off):.3f} p95 {np.percentile(cos_off, 95):.3f} max {cos_off.max():.3f}")
    print()
    print(table("min_seed_cosine", cos_on, cos_off, [0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5]))
    print()
    print(table("min_seed_overlap", ov_on, ov_off, [0.1, 0.2, 0.25, 0.34, 0.5, 0.67]))
    both_on = np.mean((ov_on >= args.overlap) & (cos_on >= args.cosine))
    both_off = np.mean((ov_off >= args.overlap) & (cos_off >= args.cosine))
    print(f"\nboth checks (overlap >= {args.overlap}, cosine >= {args.cosine}): on-seed {both_on:.1%} accepted, "
          f"shuffled {both_off:.1%} accepted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
