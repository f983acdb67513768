"""Near-duplicate captions after Stage 1: MinHash signatures (datasketch) + LSH banding, then a greedy pass in id order.

Why MinHash on text and not embedding cosine: bench/near_duplicates.py measured both on the demo seeds
with synthetic near-duplicates (word edits, clause swaps) and distinct-but-similar captions (same template,
other label); the figures and the reason are in bench/README.md.

How it scales (1.2M captions, N processes):
1. Signatures: a sharded map over the Stage-1 parts (the same shards as Stage 1), one part per shard, so any
   process count computes the same signatures and a killed build resumes.
2. Rank 0 bands the signatures (b bands of r rows, picked by datasketch for the threshold) and keeps only pairs
   that share a band; their Jaccard is estimated from the full signatures. Recall is the LSH S-curve at the
   threshold (bench/README.md), not 100%.
3. Greedy in id order: a caption is a near-duplicate when an *earlier kept* caption is at or above the threshold;
   it points (`duplicate_of`) at the most similar such caption. Kept captions are then pairwise below the
   threshold, every rejected one points at a kept one, and the result depends on ids only, never on process count.
4. The flagged rows are marked rejected (`near_duplicate`, caption cleared, `duplicate_of` set) in their Stage-1
   parts, so the captions config, the rejections table and the later stages all see them as rejections.
Re-running on marked parts changes nothing (kept captions have no kept duplicate), so a resume is safe.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unicorn_datasets.dataset.layout import NEAR_DUP
from unicorn_datasets.recipe import NearDupSection
from unicorn_datasets.text.tokens import words

STAGE = NEAR_DUP  # the signature parts' stage name in the work area
REASON = "near_duplicate"
SIGNATURE_SEED = 1  # fixed: signatures must not change with the build seed, or resumes would differ
# LSH band weights (false positive, false negative): candidates are re-checked on the full signature, so a
# false positive costs one comparison while a false negative is a missed duplicate; weigh misses heavily
LSH_WEIGHTS = (0.05, 0.95)
BUCKET_CAP = 64  # compare a row with at most this many earlier rows per LSH bucket (bounds exact-dup floods)


def provenance(cfg: NearDupSection) -> dict[str, Any]:
    """The section with the LSH banding datasketch picked and the recall it gives at the threshold."""
    b, r = lsh_params(cfg)
    return {**dataclasses.asdict(cfg), "lsh_bands": b, "lsh_rows": r,
            "recall_at_threshold": round(candidate_probability(cfg.threshold, cfg), 4),
            "recall_at_threshold_plus_0.1": round(candidate_probability(min(1.0, cfg.threshold + 0.1), cfg), 4)}


# ---- signatures --------------------------------------------------------------------------------


def shingles(text: str, n: int) -> set[bytes]:
    toks = words(text or "")
    if len(toks) <= n:
        return {" ".join(toks).encode()} if toks else {b""}
    return {" ".join(toks[i : i + n]).encode() for i in range(len(toks) - n + 1)}


def signatures(texts: list[str], cfg: NearDupSection) -> np.ndarray:
    """uint32 MinHash signatures, one row per text."""
    from datasketch import MinHash

    if not texts:
        return np.zeros((0, cfg.num_perm), np.uint32)
    hashes = MinHash.bulk([shingles(t, cfg.shingle) for t in texts], num_perm=cfg.num_perm, seed=SIGNATURE_SEED)
    return np.stack([m.hashvalues for m in hashes]).astype(np.uint32)


def lsh_params(cfg: NearDupSection) -> tuple[int, int]:
    """(bands, rows per band) datasketch picks for this threshold and LSH_WEIGHTS."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm, weights=LSH_WEIGHTS)
    return int(lsh.b), int(lsh.r)


def candidate_probability(similarity: float, cfg: NearDupSection) -> float:
    """Chance that a pair with this Jaccard shares a band (the LSH S-curve): the recall at that similarity."""
    b, r = lsh_params(cfg)
    return 1.0 - (1.0 - similarity**r) ** b


# ---- candidate pairs and the greedy pass -----------------------------------------------------


def candidate_pairs(sig: np.ndarray, bands: int, rows: int) -> set[tuple[int, int]]:
    """(earlier, later) row pairs that share at least one LSH band."""
    pairs: set[tuple[int, int]] = set()
    for b in range(bands):
        block = np.ascontiguousarray(sig[:, b * rows : (b + 1) * rows])
        keys = block.view(np.dtype((np.void, block.dtype.itemsize * rows)))[:, 0]
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        shared = np.flatnonzero(counts[inverse] > 1)
        groups: dict[int, list[int]] = defaultdict(list)
        for i in shared:  # ascending: each group lists its rows in id order
            groups[int(inverse[i])].append(int(i))
        for members in groups.values():
            for pos, later in enumerate(members[1:], start=1):
                for earlier in members[max(0, pos - BUCKET_CAP) : pos]:
                    pairs.add((earlier, later))
    return pairs


def find_duplicates(sig: np.ndarray, cfg: NearDupSection) -> dict[int, tuple[int, float]]:
    """{later row: (kept earlier row it duplicates, estimated Jaccard)} for rows in id order."""
    bands, rows = lsh_params(cfg)
    neighbours: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for earlier, later in sorted(candidate_pairs(sig, bands, rows)):
        sim = float(np.mean(sig[earlier] == sig[later]))
        if sim >= cfg.threshold:
            neighbours[later].append((earlier, sim))
    out: dict[int, tuple[int, float]] = {}
    for later in sorted(neighbours):
        kept = [(e, s) for e, s in neighbours[later] if e not in out]
        if kept:
            out[later] = max(kept, key=lambda es: (es[1], -es[0]))  # most similar, then earliest
    return out


def near_duplicates(ids: list[str], texts: list[str], cfg: NearDupSection) -> dict[str, tuple[str, float]]:
    """{id: (duplicate_of id, similarity)} for one in-memory list (tests, benchmarks, small builds)."""
    order = sorted(range(len(ids)), key=lambda i: ids[i])
    sig = signatures([texts[i] for i in order], cfg)
    return {ids[order[a]]: (ids[order[b]], s) for a, (b, s) in find_duplicates(sig, cfg).items()}


# ---- the build hook --------------------------------------------------------------------------


def _accepted_rows(table: pa.Table) -> pa.Table:
    table = table.select(["id", "caption"]).cast(pa.schema([("id", pa.string()), ("caption", pa.string())]))
    return table.filter(pc.is_valid(table.column("caption")))


def reject_near_duplicates(ctx: Any, stage: str, cfg: NearDupSection) -> None:
    """Run on every rank after Stage 1's map and before rank 0 assembles the captions config."""
    import datasets
    import pyarrow.parquet as pq

    from unicorn_datasets.pipeline.context import log
    from unicorn_datasets.pipeline.shards import Shards, run_map

    repo = ctx.repo
    shards = sorted(repo.done_shards(stage))
    n_shards = max(shards) + 1 if shards else 0

    def load(i: int) -> datasets.Dataset:
        return datasets.Dataset(_accepted_rows(pq.read_table(repo.part_path(stage, i), columns=["id", "caption"])))

    def make_fn() -> Any:
        def fn(batch: dict[str, list]) -> dict[str, list]:
            return {"id": batch["id"], "signature": signatures(batch["caption"], cfg)}  # list<uint32> parts
        return fn

    n_rows = sum(m.get("rows", 0) for m in repo.part_meta(stage))
    run_map(ctx, STAGE, Shards(n_rows, n_shards, load), make_fn, batch_size=1024)
    if ctx.is_main:
        ids: list[str] = []
        sigs: list[np.ndarray] = []
        for t in repo.read_parts(STAGE):
            if t.num_rows:
                ids += t.column("id").to_pylist()
                sigs.append(np.asarray(t.column("signature").combine_chunks().flatten(), np.uint32
                                       ).reshape(t.num_rows, cfg.num_perm))
        order = sorted(range(len(ids)), key=lambda i: ids[i])
        sig = np.concatenate(sigs)[order] if sigs else np.zeros((0, cfg.num_perm), np.uint32)
        dup = {ids[order[a]]: (ids[order[b]], s) for a, (b, s) in find_duplicates(sig, cfg).items()}
        marked = mark_parts(repo, stage, dup)
        log(f"{stage}: {len(dup)} near-duplicate caption(s) rejected ({marked} newly marked; MinHash Jaccard >= "
            f"{cfg.threshold}, {len(ids)} captions compared)")
    ctx.barrier()


def mark_parts(repo: Any, stage: str, dup: dict[str, tuple[str, float]]) -> int:
    """Mark the flagged rows rejected in their Stage-1 parts (idempotent); returns rows newly marked."""
    import pyarrow.parquet as pq

    marked = 0
    for shard in sorted(repo.done_shards(stage)):
        path = repo.part_path(stage, shard)
        t = pq.read_table(path)
        ids = t.column("id").to_pylist()
        hit = [i in dup and r is None for i, r in zip(ids, t.column("reject_reason").to_pylist(), strict=True)]
        if not any(hit):
            continue
        mask = pa.array(hit)
        reason = pc.if_else(mask, pa.scalar(REASON), t.column("reject_reason").cast(pa.string()))
        caption = pc.if_else(mask, pa.scalar(None, pa.string()), t.column("caption").cast(pa.string()))
        previous = (t.column("duplicate_of").to_pylist() if "duplicate_of" in t.column_names
                    else [None] * t.num_rows)
        dup_of = pa.array([dup[i][0] if h else p for i, h, p in zip(ids, hit, previous, strict=True)], pa.string())
        t = t.set_column(t.schema.get_field_index("reject_reason"), "reject_reason", reason)
        t = t.set_column(t.schema.get_field_index("caption"), "caption", caption)
        if "duplicate_of" in t.column_names:
            t = t.set_column(t.schema.get_field_index("duplicate_of"), "duplicate_of", dup_of)
        else:
            t = t.append_column("duplicate_of", dup_of)
        repo.write_part(stage, shard, t, repo.shard_meta(stage, shard))
        marked += sum(hit)
    return marked
