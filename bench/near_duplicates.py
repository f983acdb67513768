"""Near-duplicate captions: MinHash/LSH (datasketch) vs embedding cosine (MiniLM + faiss), quality and cost.

quality: caption-length texts stitched from the shipped seed sentences (distinct captions often share whole
sentences: the hard negatives), plus planted near-duplicates of some of them: (a) edits, ~10% of the words
replaced, dropped or inserted; (b) the same sentences reordered with one replaced. Every method flags a row
when an earlier row (id order) is at or above its threshold; precision/recall are over the planted rows.
scale: the rank-0 part of the MinHash path (LSH banding + verify + greedy) at 100K and 1.2M signatures
(random signatures with 1% planted copies at Jaccard ~0.85), and the per-process signature rate on real text.

    python bench/near_duplicates.py quality --captions 2000 --planted 400
    python bench/near_duplicates.py scale --rows 100000 1200000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage3 import synthetic_captions  # noqa: E402

from unicorn_datasets.analysis.near_dup import (  # noqa: E402
    candidate_probability,
    find_duplicates,
    near_duplicates,
    signatures,
)
from unicorn_datasets.recipe import NearDupSection  # noqa: E402

FILLER = ["quietly", "small", "bright", "old", "several", "nearby", "softly", "large", "wooden", "distant"]


def edit_words(text: str, rate: float, rng: np.random.Generator) -> str:
    out = []
    for w in text.split():
        u = rng.random()
        if u < rate / 3:
            continue  # drop
        if u < 2 * rate / 3:
            out.append(str(rng.choice(FILLER)))  # replace
            continue
        out.append(w)
        if u < rate:
            out.append(str(rng.choice(FILLER)))  # insert
    return " ".join(out)


def reorder(text: str, other: str, rng: np.random.Generator) -> str:
    sents = [s.strip() for s in text.split(". ") if s.strip()]
    rng.shuffle(sents)
    if len(sents) > 2:
        sents[0] = other.split(". ")[0]
    return ". ".join(sents)


def planted_set(n: int, planted: int, seed: int = 0) -> tuple[list[str], list[str], set[str]]:
    """ids, texts, ids of the planted near-duplicates (each id sorts after its original's)."""
    rng = np.random.default_rng(seed)
    base = synthetic_captions(n, seed=seed)
    ids = [f"r{i:06d}" for i in range(n)]
    texts = list(base)
    dups: set[str] = set()
    for j, i in enumerate(rng.choice(n, size=planted, replace=False)):
        kind = "e" if j % 2 == 0 else "o"
        text = edit_words(base[i], 0.10, rng) if kind == "e" else reorder(base[i], base[(i + 1) % n], rng)
        ids.append(f"r{i:06d}~{kind}")  # sorts right after its original
        texts.append(text)
        dups.add(ids[-1])
    return ids, texts, dups


def embedding_flags(ids: list[str], emb: np.ndarray, threshold: float) -> set[str]:
    import faiss

    order = sorted(range(len(ids)), key=lambda i: ids[i])
    x = np.ascontiguousarray(emb[order], np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    lims, _, nbrs = index.range_search(x, threshold)
    return {ids[order[a]] for a in range(len(x)) if (nbrs[lims[a] : lims[a + 1]] < a).any()}


def score(flagged: set[str], dups: set[str]) -> str:
    """precision | recall | recall on word edits | recall on reordered + one sentence replaced"""
    tp = len(flagged & dups)
    edits, orders = {d for d in dups if d.endswith("~e")}, {d for d in dups if d.endswith("~o")}
    return (f"{tp / len(flagged) if flagged else 1.0:.3f} | {tp / len(dups):.3f} | "
            f"{len(flagged & edits) / len(edits):.3f} | {len(flagged & orders) / len(orders):.3f}")


def quality(args: argparse.Namespace) -> None:
    ids, texts, dups = planted_set(args.captions, args.planted)
    words = np.mean([len(t.split()) for t in texts])
    print(f"{len(ids)} captions ({len(dups)} planted near-duplicates), {words:.0f} words on average\n")
    print("| method | threshold | precision | recall | recall (edits) | recall (reorder) | seconds | ms / 1K |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for t in args.minhash:
        cfg = NearDupSection(enabled=True, threshold=t, shingle=args.shingle)
        t0 = time.perf_counter()
        flagged = set(near_duplicates(ids, texts, cfg))
        secs = time.perf_counter() - t0
        print(f"| minhash ({args.shingle}-word shingles, 128 perm) | {t} | {score(flagged, dups)} | {secs:.1f} | "
              f"{1000 * secs / len(ids) * 1000:.0f} |", flush=True)
    from unicorn_datasets.encoders import load_encoder

    enc = load_encoder("minilm", device="cpu")
    t0 = time.perf_counter()
    emb = enc.encode_text(texts, batch_size=64)
    enc_secs = time.perf_counter() - t0
    for t in args.cosine:
        t1 = time.perf_counter()
        flagged = embedding_flags(ids, emb, t)
        secs = enc_secs + time.perf_counter() - t1
        print(f"| cosine (MiniLM 384-d, faiss exact) | {t} | {score(flagged, dups)} | {secs:.1f} | "
              f"{1000 * secs / len(ids) * 1000:.0f} |", flush=True)


def scale(args: argparse.Namespace) -> None:
    cfg = NearDupSection(enabled=True, threshold=args.threshold)
    texts = synthetic_captions(args.sig_rows)
    t0 = time.perf_counter()
    signatures(texts, cfg)
    rate = args.sig_rows / (time.perf_counter() - t0)
    print(f"signatures: {rate:.0f} captions/s per process (one core, {args.sig_rows} captions of ~85 words)")
    print(f"LSH recall at the threshold {args.threshold}: {candidate_probability(args.threshold, cfg):.3f}, "
          f"at {args.threshold + 0.1:.1f}: {candidate_probability(args.threshold + 0.1, cfg):.3f}\n")
    print("| rows | planted | found | banding + verify + greedy s | signatures, 1 process (est.) s |\n"
          "|---:|---:|---:|---:|---:|")
    for n in args.rows:
        rng = np.random.default_rng(0)
        sig = rng.integers(0, 2**32, size=(n, cfg.num_perm), dtype=np.uint32)
        planted = rng.choice(np.arange(1, n), size=n // 100, replace=False)
        for i in planted:  # copy an earlier row, then re-draw ~15% of its values: Jaccard estimate ~0.85
            sig[i] = sig[rng.integers(0, i)]
            redraw = rng.random(cfg.num_perm) < 0.15
            sig[i, redraw] = rng.integers(0, 2**32, size=int(redraw.sum()), dtype=np.uint32)
        t0 = time.perf_counter()
        found = find_duplicates(sig, cfg)
        secs = time.perf_counter() - t0
        print(f"| {n:,} | {len(planted):,} | {len(set(found) & set(planted.tolist())):,} | {secs:.1f} | "
              f"{n / rate:.0f} |", flush=True)
        del sig


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--captions", type=int, default=2000)
    q.add_argument("--planted", type=int, default=400)
    q.add_argument("--shingle", type=int, default=3)
    q.add_argument("--minhash", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7])
    q.add_argument("--cosine", type=float, nargs="+", default=[0.8, 0.85, 0.9, 0.95])
    s = sub.add_parser("scale")
    s.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_200_000])
    s.add_argument("--threshold", type=float, default=0.7)
    s.add_argument("--sig-rows", type=int, default=5000)
    args = ap.parse_args()
    {"quality": quality, "scale": scale}[args.cmd](args)


if __name__ == "__main__":
    main()
