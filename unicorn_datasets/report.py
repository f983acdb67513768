"""Diversity and balance report on a built dataset folder (the Synth² analysis, plus accounting).

Synth² embeds captions, clusters them with k-means and compares the cluster-size distribution:
share of the 5 largest clusters (57.7% for their synthetic captions vs 69.8-83.0% for real
sets) and the entropy of cluster sizes (natural log; 3.81 for theirs). This module does the same
on OUT: it clusters the vectors stored in `pretrain.embedding` (or, without them, hashed TF-IDF
bag-of-words vectors of the captions), with a seeded numpy k-means++ / Lloyd, and adds caption
length and type-token statistics, per-source and per-task counts, and rejections by stage and
reason. Results go to `artifacts/report.json` (and plots when matplotlib is importable).
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_path, write_text
from .hub import config_files
from .layout import ARTIFACTS, REJECTIONS, REPORT

HASH_DIM = 512  # hashed bag-of-words width: enough to separate topics, small enough for 200k rows in memory
CHUNK = 16384  # rows per distance block: bounds the (rows x k) matrix
WORD = re.compile(r"\w+(?:['’]\w+)*")


# ---- reading OUT -----------------------------------------------------------------------------


def _files(folder: Path, config: str) -> list[Path]:
    return config_files(folder, config)


def _num_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def _has_column(files: list[Path], column: str) -> bool:
    return bool(files) and column in pq.ParquetFile(files[0]).schema_arrow.names


def _iter_column(files: list[Path], column: str, batch_size: int = 65536) -> Iterator[pa.Array]:
    for f in files:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=[column]):
            yield batch.column(0)


def _sample_index(n: int, max_rows: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted row positions to keep, or None for all rows."""
    if n <= max_rows:
        return None
    return np.sort(rng.choice(n, size=max_rows, replace=False))


def _take(files: list[Path], column: str, index: np.ndarray | None) -> Iterator[pa.Array]:
    """Stream a column, keeping only the rows at `index` (global positions, sorted)."""
    start = 0
    for arr in _iter_column(files, column):
        end = start + len(arr)
        if index is None:
            yield arr
        else:
            lo, hi = np.searchsorted(index, [start, end])
            if hi > lo:
                yield arr.take(pa.array(index[lo:hi] - start))
        start = end


def _stored_embeddings(files: list[Path], index: np.ndarray | None) -> np.ndarray:
    blocks = []
    for arr in _take(files, "embedding", index):
        if arr.null_count:
            raise ValueError(f"pretrain.embedding has {arr.null_count} null rows in {files[0].parent}")
        if pa.types.is_fixed_size_list(arr.type):
            d = arr.type.list_size
            vals = arr.flatten().to_numpy(zero_copy_only=False)  # flatten honours slices/offsets
        else:  # a variable-length list column: every row must still have the same length
            vals = arr.flatten().to_numpy(zero_copy_only=False)
            d = len(vals) // max(1, len(arr))
        blocks.append(vals.reshape(len(arr), d))
    if not blocks:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(blocks).astype(np.float32, copy=False)


def _tokens(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _bucket(token: str) -> int:
    # crc32, not hash(): Python's str hash is salted per process and would break determinism
    return zlib.crc32(token.encode("utf-8"))


def _hashed_tfidf(texts: list[str], dim: int = HASH_DIM) -> np.ndarray:
    """Signed hashed bag of words, sublinear tf x smooth idf, rows L2-normalised. numpy only."""
    n = len(texts)
    x = np.zeros((n, dim), np.float32)
    cache: dict[str, tuple[int, float]] = {}
    for i, text in enumerate(texts):
        for tok, c in Counter(_tokens(text)).items():
            if tok not in cache:
                h = _bucket(tok)
                cache[tok] = (h % dim, 1.0 if (h >> 31) & 1 else -1.0)  # the sign bit evens out collisions
            j, s = cache[tok]
            x[i, j] += s * (1.0 + math.log(c))
    df = np.count_nonzero(x, axis=0)
    x *= (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
    return x


# ---- k-means (numpy) -------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _chunks(n: int) -> Iterator[slice]:
    for s in range(0, n, CHUNK):
        yield slice(s, min(n, s + CHUNK))


def _sq_dist_to(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances of all rows of x to the rows of c (n x m), in chunks."""
    c_sq = np.einsum("ij,ij->i", c, c)
    out = np.empty((len(x), len(c)), np.float32)
    for sl in _chunks(len(x)):
        out[sl] = x_sq[sl, None] - 2.0 * (x[sl] @ c.T) + c_sq[None, :]
    return np.maximum(out, 0.0, out=out)


def _assign(x: np.ndarray, x_sq: np.ndarray, centres: np.ndarray, sums: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centre and squared distance per row; adds each row into `sums[label]` when given,
    in the same pass, while the chunk is still in cache (the pass is memory-bound)."""
    labels = np.empty(len(x), np.int64)
    best = np.empty(len(x), np.float32)
    c_sq = np.einsum("ij,ij->i", centres, centres)
    for sl in _chunks(len(x)):
        xc = x[sl]
        d = x_sq[sl, None] - 2.0 * (xc @ centres.T) + c_sq[None, :]
        lab = d.argmin(axis=1)
        labels[sl] = lab
        best[sl] = np.maximum(d[np.arange(len(d)), lab], 0.0)
        if sums is not None:
            order = np.argsort(lab, kind="stable")
            ls = lab[order]
            starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]])
            sums[ls[starts]] += np.add.reduceat(xc[order], starts, axis=0, dtype=np.float64)
    return labels, best


def _kmeans_pp(x: np.ndarray, x_sq: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ (as scikit-learn): 2 + ln k candidates per step, keep the one that lowers
    the potential most. Plain k-means++ too often puts two seeds in one blob and misses another."""
    n = len(x)
    trials = 2 + int(math.log(k))
    centres = np.empty((k, x.shape[1]), np.float32)
    centres[0] = x[rng.integers(n)]
    closest = _sq_dist_to(x, x_sq, centres[:1])[:, 0].astype(np.float64)
    for i in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than k: any point will do
            cand = rng.integers(n, size=trials)
        else:
            cand = np.searchsorted(np.cumsum(closest), rng.random(trials) * total)
            cand = np.minimum(cand, n - 1)
        d = np.minimum(closest[:, None], _sq_dist_to(x, x_sq, x[cand]).astype(np.float64))
        best = int(d.sum(axis=0).argmin())
        centres[i] = x[cand[best]]
        closest = d[:, best]
    return centres


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, max_iter: int = 50, tol: float = 1e-4,
           init_rows: int = 128) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Lloyd's k-means with greedy k-means++ seeding. Returns (labels, centres, inertia, iterations).

    Deterministic for a given seed. Seeding runs on a random subset of `init_rows * k` rows: each
    seeding step is a full pass over memory, and k passes over 200k rows cost far more than the
    seeds gain. Stops when labels no longer change or inertia improves by less than `tol`
    (relative): cluster sizes, not the last digit of inertia, are what the report needs. An
    emptied cluster is re-seeded with the point farthest from its centre, so k clusters remain.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of rows ({n})")
    rng = np.random.default_rng(seed)
    x_sq = np.einsum("ij,ij->i", x, x)
    sub = np.sort(rng.choice(n, size=init_rows * k, replace=False)) if n > init_rows * k else slice(None)
    centres = _kmeans_pp(x[sub], x_sq[sub], k, rng)
    prev_inertia = math.inf
    labels = np.zeros(n, np.int64)
    it = 0
    for it in range(1, max_iter + 1):
        sums = np.zeros((k, x.shape[1]), np.float64)
        new_labels, dist = _assign(x, x_sq, centres, sums)
        inertia = float(dist.sum(dtype=np.float64))
        counts = np.bincount(new_labels, minlength=k)
        empty = np.flatnonzero(counts == 0)
        centres = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
        if len(empty):
            far = np.argsort(-dist, kind="stable")[: len(empty)]
            centres[empty] = x[far]
        converged = it > 1 and not len(empty) and (
            np.array_equal(new_labels, labels) or prev_inertia - inertia <= tol * prev_inertia)
        labels, prev_inertia = new_labels, inertia
        if converged:
            break
    labels, dist = _assign(x, x_sq, centres)
    return labels, centres, float(dist.sum(dtype=np.float64)), it


def default_k(n: int) -> int:
    """round(sqrt(n/2)) clipped to [2, 100] (and never above n)."""
    return max(1, min(n, max(2, min(100, round(math.sqrt(n / 2))))))


def balance_stats(labels: np.ndarray, k: int) -> dict[str, Any]:
    """Cluster sizes (largest first), share of the 5 largest, entropy of the size distribution."""
    sizes = np.sort(np.bincount(labels, minlength=k))[::-1]
    n = int(sizes.sum())
    p = sizes[sizes > 0] / n
    entropy = float(-(p * np.log(p)).sum())
    return {
        "cluster_sizes": [int(s) for s in sizes],
        "top5_share": float(sizes[:5].sum() / n),
        "entropy": entropy,
        "entropy_normalised": entropy / math.log(k) if k > 1 else 0.0,
        "entropy_max": math.log(k),
    }


# ---- text statistics -------------------------------------------------------------------------


def text_stats(captions: Iterator[str] | list[str]) -> dict[str, Any]:
    """Length and type-token statistics of captions.

    Tokens are lowercased word tokens (regex `\\w+(?:['’]\\w+)*`: letters/digits, with inner
    apostrophes kept); punctuation is not a token. `ttr_mean_per_caption` is the mean over
    captions of (distinct tokens / tokens) in that caption, the reading of the Unicorn paper's
    0.68 that makes sense (corpus-level TTR of a million captions is tiny); `ttr_corpus` is
    distinct/total over the whole corpus, reported for completeness. Captions without tokens
    are skipped for per-caption TTR. Lengths are token counts per caption.
    """
    lengths: list[int] = []
    ttrs: list[float] = []
    vocab: set[str] = set()
    for text in captions:
        toks = _tokens(text or "")
        lengths.append(len(toks))
        if toks:
            distinct = set(toks)
            ttrs.append(len(distinct) / len(toks))
            vocab |= distinct
    if not lengths:
        return {"captions": 0}
    arr = np.asarray(lengths, np.float64)
    total = int(arr.sum())
    pct = {f"p{q}": float(np.percentile(arr, q)) for q in (5, 25, 50, 75, 95)}
    return {
        "captions": len(lengths),
        "length_words": {"mean": float(arr.mean()), "std": float(arr.std()), "min": int(arr.min()),
                         "max": int(arr.max()), **pct},
        "ttr_mean_per_caption": float(np.mean(ttrs)) if ttrs else 0.0,
        "ttr_corpus": len(vocab) / total if total else 0.0,
        "vocabulary": len(vocab),
        "tokens": total,
        "ttr_definition": "mean over captions of distinct/total lowercased word tokens in that caption",
    }


def _caption_texts(files: list[Path], column: str) -> Iterator[str]:
    for arr in _iter_column(files, column):
        yield from (s or "" for s in arr.to_pylist())


def _counts(files: list[Path], column: str) -> dict[str, int]:
    c: Counter[str] = Counter()
    for arr in _iter_column(files, column):
        c.update("<null>" if v is None else str(v) for v in arr.to_pylist())
    return dict(c.most_common())


def _rejections(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    t = pq.read_table(path, columns=[c for c in ("stage", "reason") if c in pq.read_schema(path).names])
    by: dict[str, Counter[str]] = {}
    stages = t.column("stage").to_pylist() if "stage" in t.column_names else ["?"] * t.num_rows
    reasons = t.column("reason").to_pylist() if "reason" in t.column_names else ["?"] * t.num_rows
    for s, r in zip(stages, reasons, strict=True):
        by.setdefault(str(s), Counter())[str(r) if r is not None else "<none>"] += 1
    return {"total": t.num_rows,
            "by_stage": {s: {"total": sum(c.values()), "by_reason": dict(c.most_common())}
                         for s, c in sorted(by.items())}}


# ---- writing ---------------------------------------------------------------------------------


def _write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def _plots(art: Path, sizes: list[int], lengths: list[int]) -> list[str]:
    """PNG plots when matplotlib is installed; an empty list otherwise (it is not a dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on build machines
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    def save(name: str, title: str, xlabel: str, draw: Any) -> None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        draw(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("captions")
        ax.set_title(title)
        fig.tight_layout()
        with atomic_path(art / name) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
        plt.close(fig)
        written.append(f"artifacts/{name}")

    written: list[str] = []
    if sizes:
        save("cluster_sizes.png", "caption cluster sizes", "cluster (largest first)",
             lambda ax: ax.bar(range(1, len(sizes) + 1), sizes, width=1.0))
    if lengths:
        save("caption_lengths.png", "caption length", "words per caption",
             lambda ax: ax.hist(lengths, bins=min(50, max(1, max(lengths) - min(lengths) + 1))))
    return written


# ---- the report ------------------------------------------------------------------------------


def report(folder: str | Path, *, k: int | None = None, seed: int = 0, embeddings: str = "auto",
           max_rows: int = 200_000, write: bool = True) -> dict[str, Any]:
    """Diversity/balance statistics of a built folder; also written to `artifacts/report.json`.

    embeddings: "auto" (pretrain.embedding if present, else hashed TF-IDF of the captions),
    "stored" (require pretrain.embedding) or "hashed". Vectors are L2-normalised before
    k-means, so clusters follow direction (cosine), as is usual for text embeddings. At most
    `max_rows` rows (a seeded random sample) are clustered; text statistics use every caption.
    k defaults to round(sqrt(n/2)) clipped to [2, 100].
    """
    folder = Path(folder)
    if embeddings not in ("auto", "stored", "hashed"):
        raise ValueError(f"embeddings must be 'auto', 'stored' or 'hashed', not {embeddings!r}")
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a dataset folder")
    rng = np.random.default_rng(seed)
    cap_files, pre_files, ins_files = (_files(folder, c) for c in ("captions", "pretrain", "instruct"))
    text_files = cap_files if _has_column(cap_files, "caption") else pre_files
    if not _has_column(text_files, "caption"):
        raise ValueError(f"{folder} has no captions: neither captions/ nor pretrain/ Parquet "
                         "has a `caption` column")

    out: dict[str, Any] = {"folder": str(folder), "seed": seed}
    lengths: list[int] = []

    def texts() -> Iterator[str]:
        for t in _caption_texts(text_files, "caption"):
            lengths.append(len(_tokens(t)))
            yield t

    out["text"] = text_stats(texts())
    out["n_captions"] = out["text"]["captions"]

    # -- clustering
    use_stored = embeddings == "stored" or (embeddings == "auto" and _has_column(pre_files, "embedding"))
    if use_stored:
        if not _has_column(pre_files, "embedding"):
            raise ValueError(f"{folder}: embeddings='stored' but pretrain/ has no `embedding` column")
        n_all = _num_rows(pre_files)
        index = _sample_index(n_all, max_rows, rng)
        x = _stored_embeddings(pre_files, index)
        source = "pretrain.embedding"
    else:
        n_all = _num_rows(text_files)
        index = _sample_index(n_all, max_rows, rng)
        texts_sample = [s or "" for arr in _take(text_files, "caption", index) for s in arr.to_pylist()]
        x = _hashed_tfidf(texts_sample)
        source = f"hashed-tfidf-{HASH_DIM}"
    x = _normalise(x)  # float32: upcasting float16 once beats doing it in every k-means pass
    n = len(x)
    clustering: dict[str, Any] = {"embeddings": source, "rows": n_all, "rows_clustered": n,
                                  "dim": int(x.shape[1]) if x.ndim == 2 else 0}
    if n >= 2:
        kk = min(k, n) if k else default_k(n)
        labels, _, inertia, iters = kmeans(x, kk, seed=seed)
        clustering.update({"k": kk, "inertia": inertia, "iterations": iters, **balance_stats(labels, kk)})
    else:
        clustering.update({"k": 0, "cluster_sizes": [n] if n else []})
    out["clustering"] = clustering
    # the headline numbers, side by side with Synth²'s (57.7% top-5 share, entropy 3.81)
    out["k"] = clustering["k"]
    out["top5_share"] = clustering.get("top5_share")
    out["entropy"] = clustering.get("entropy")
    out["entropy_normalised"] = clustering.get("entropy_normalised")

    # -- composition and accounting
    out["per_source"] = _counts(cap_files, "source") if _has_column(cap_files, "source") else {}
    out["per_task"] = _counts(ins_files, "task") if _has_column(ins_files, "task") else {}
    out["rows"] = {c: _num_rows(f) for c, f in
                   (("captions", cap_files), ("pretrain", pre_files), ("instruct", ins_files)) if f}
    out["rejections"] = _rejections(folder / ARTIFACTS / REJECTIONS)

    if write:
        art = folder / ARTIFACTS
        art.mkdir(exist_ok=True)
        out["plots"] = _plots(art, clustering.get("cluster_sizes", []), lengths)
        _write_json(art / REPORT, out)
    else:
        out["plots"] = []
    return out
