"""k-means at scale: faiss vs scikit-learn MiniBatchKMeans on the same data.

Synthetic data: `--rows` unit vectors in `--dim` dimensions drawn around `--concepts` random directions
with skewed (Zipf) concept sizes, like caption embeddings. Each method clusters into k clusters; the
table gives wall seconds, the ratio to faiss, and how well the clusters recover the concepts
(adjusted mutual information on a 50K-row sample), all in one run.

    python bench/clustering.py --rows 100000 1200000 --threads 2
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def synthetic(n: int, dim: int, concepts: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((concepts, dim)).astype(np.float32)
    p = 1.0 / np.arange(1, concepts + 1) ** 0.8
    truth = rng.choice(concepts, size=n, p=p / p.sum())
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, 100_000):  # in blocks: bounds the float64 temporaries
        e = min(n, s + 100_000)
        x[s:e] = centres[truth[s:e]] + 0.9 * rng.standard_normal((e - s, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, truth


def run_faiss(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from unicorn_datasets.analysis.clustering import kmeans

    return kmeans(x, k, seed=seed, normalised=True).labels


def run_minibatch(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=4096, n_init=1, max_iter=25)
    return km.fit_predict(x)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_200_000])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--concepts", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="faiss,minibatch")
    args = ap.parse_args()

    import threadpoolctl
    from sklearn.metrics import adjusted_mutual_info_score

    from unicorn_datasets.analysis.clustering import set_threads

    set_threads(args.threads)
    threadpoolctl.threadpool_limits(args.threads)
    runners = {"faiss": run_faiss, "minibatch": run_minibatch}
    print("| rows | method | seconds | x faiss | AMI vs concepts |\n|---:|---|---:|---:|---:|")
    for n in args.rows:
        x, truth = synthetic(n, args.dim, args.concepts)
        sample = np.random.default_rng(1).choice(n, size=min(n, 50_000), replace=False)
        base = None
        for name in args.methods.split(","):
            t0 = time.perf_counter()
            labels = runners[name](x, args.k, 0)
            secs = time.perf_counter() - t0
            base = base or secs
            ami = adjusted_mutual_info_score(truth[sample], labels[sample])
            print(f"| {n:,} | {name} | {secs:.1f} | {secs / base:.2f} | {ami:.3f} |", flush=True)
        del x


if __name__ == "__main__":
    main()
