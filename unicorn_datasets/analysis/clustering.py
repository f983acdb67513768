"""k-means at scale (faiss), shared by the diversity report and the concept-balanced seed selection.

faiss-cpu runs Lloyd's k-means with BLAS and OpenMP; bench/clustering.py measured it against
scikit-learn's MiniBatchKMeans at 100K and 1.2M x 384 (figures in bench/README.md). Vectors are
L2-normalised first, so clusters follow direction (cosine), as usual for text embeddings.
Deterministic for a given seed: faiss seeds its initial sample from `seed`, and thread count does
not change the assignment of a row (each row's distances are computed independently).
"""

from __future__ import annotations

import math
import os
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from unicorn_datasets.text.tokens import words

# faiss trains on at most this many points per centroid (a seeded subsample); assignment uses all rows
MAX_POINTS_PER_CENTROID = 256
HASH_DIM = 512  # hashed bag-of-words width: enough to separate topics, small enough for 200k rows in memory
SMALL_WORK = 2_000_000  # rows x clusters below which one thread is faster than several on a shared machine


def set_threads(n: int | None = None) -> int:
    """OpenMP threads for faiss: UNICORN_FAISS_THREADS, else the CPUs this process may use (not the whole
    machine's count: faiss would spin that many threads on a shared or cgroup-limited box)."""
    import faiss

    if n is None:
        env = os.environ.get("UNICORN_FAISS_THREADS")
        n = int(env) if env else len(os.sched_getaffinity(0))
    faiss.omp_set_num_threads(max(1, n))
    return max(1, n)


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def default_k(n: int) -> int:
    """round(sqrt(n/2)) clipped to [2, 100] (and never above n)."""
    return max(1, min(n, max(2, min(100, round(math.sqrt(n / 2))))))


@dataclass
class Clusters:
    labels: np.ndarray  # int64 cluster per row
    centres: np.ndarray  # float32 k x d
    inertia: float  # sum of squared distances to the assigned centre
    iterations: int


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, niter: int = 25, normalised: bool = False) -> Clusters:
    """faiss k-means on L2-normalised rows (unless `normalised` says they already are)."""
    import faiss

    x = np.ascontiguousarray(x, dtype=np.float32) if normalised else normalise(x)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the number of rows ({n})")
    set_threads(1 if n * k < SMALL_WORK else None)  # small jobs: OpenMP wake-ups cost more than they save
    km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=int(seed) % (2**31), verbose=False,
                      max_points_per_centroid=MAX_POINTS_PER_CENTROID, min_points_per_centroid=1,
                      init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS)
    km.train(x)
    dist, labels = km.index.search(x, 1)
    return Clusters(labels[:, 0].astype(np.int64), km.centroids.copy(), float(dist.sum(dtype=np.float64)), niter)


def balance_stats(labels: np.ndarray, k: int) -> dict[str, Any]:
    """Cluster sizes (largest first), share of the 5 largest, entropy of the size distribution (nats)."""
    sizes = np.sort(np.bincount(np.asarray(labels, np.int64), minlength=k))[::-1]
    n = int(sizes.sum())
    if n == 0:
        return {"cluster_sizes": [int(s) for s in sizes], "top5_share": None, "entropy": None,
                "entropy_normalised": None, "entropy_max": math.log(k) if k > 1 else 0.0}
    p = sizes[sizes > 0] / n
    entropy = float(-(p * np.log(p)).sum())
    return {
        "cluster_sizes": [int(s) for s in sizes],
        "top5_share": float(sizes[:5].sum() / n),
        "entropy": entropy,
        "entropy_normalised": entropy / math.log(k) if k > 1 else 0.0,
        "entropy_max": math.log(k) if k > 1 else 0.0,
    }


# ---- vectors without a model, and the balanced-seed histograms (seeds/balance.py, the report) ----
def _bucket(token: str) -> int:
    # crc32, not hash(): Python's str hash is salted per process and would break determinism
    return zlib.crc32(token.encode("utf-8"))


def hashed_tfidf(texts: list[str], dim: int = HASH_DIM) -> np.ndarray:
    """Signed hashed bag of words, sublinear tf x smooth idf, rows L2-normalised. numpy only."""
    n = len(texts)
    x = np.zeros((n, dim), np.float32)
    cache: dict[str, tuple[int, float]] = {}
    for i, text in enumerate(texts):
        for tok, c in Counter(words(text)).items():
            if tok not in cache:
                h = _bucket(tok)
                cache[tok] = (h % dim, 1.0 if (h >> 31) & 1 else -1.0)  # the sign bit evens out collisions
            j, s = cache[tok]
            x[i, j] += s * (1.0 + math.log(c))
    df = np.count_nonzero(x, axis=0)
    x *= (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
    return x


def balance_report(clusters: pa.Table, caption_ids: set[str] | None) -> dict[str, Any]:
    """Cluster-size histograms (largest first), top-5 share and normalised entropy of the selected seeds,
    balanced vs the uniform draw of the same size, and of the captions built from the balanced seeds
    (accepted rows only). A uniform draw's captions were never generated, so captions have no counterpart."""
    labels = clusters.column("cluster").to_numpy()
    k = int(labels.max()) + 1 if len(labels) else 0
    ids = clusters.column("id").to_pylist()
    out: dict[str, Any] = {"k": k, "available": len(ids)}
    for name in ("balanced", "uniform"):
        mask = clusters.column(name).to_numpy(zero_copy_only=False)
        out[f"seeds_{name}"] = balance_stats(labels[mask], k)
    if caption_ids is not None:
        mask = np.fromiter((i in caption_ids for i in ids), bool, len(ids))
        out["captions_balanced"] = balance_stats(labels[mask], k)
    return out
