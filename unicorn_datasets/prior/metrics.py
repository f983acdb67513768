"""Held-out evaluation of text -> image-embedding generators: paired cosine, recall@k, Fréchet distance.

`real` is always the image side as the VLM meets it at test time: L2-normalised image embeddings minus
their set mean (what `embed-images` writes by default).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unicorn_datasets.transfer.methods import l2_normalize


def paired_cosine(gen: np.ndarray, real: np.ndarray) -> float:
    """Mean cosine between gen[i] and real[i]."""
    return float(np.mean(np.sum(l2_normalize(gen) * l2_normalize(real), axis=1)))


def recall_at_k(gen: np.ndarray, real: np.ndarray, ks: Sequence[int] = (1, 5), chunk: int = 1024) -> dict[str, float]:
    """Text->image retrieval: gen[i] is the query, real[i] its match among all rows of `real` (cosine).

    A query's rank = how many other images score strictly higher than its own (ties count in its favour)."""
    g, r = l2_normalize(gen), l2_normalize(real)
    ranks = np.empty(g.shape[0], dtype=np.int64)
    for start in range(0, g.shape[0], chunk):  # chunks: an n x n similarity matrix would not fit at 100K rows
        sims = g[start : start + chunk] @ r.T
        own = sims[np.arange(sims.shape[0]), np.arange(start, start + sims.shape[0])]
        ranks[start : start + sims.shape[0]] = (sims > own[:, None]).sum(axis=1)
    return {f"recall@{k}": float(np.mean(ranks < k)) for k in ks}


def _sqrtm_psd(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_from_moments(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1 C2)^1/2), via eigendecompositions of symmetric matrices.

    tr((C1 C2)^1/2) = tr((S C2 S)^1/2) with S = C1^1/2: S C2 S is symmetric PSD, so its square root comes
    from eigvalsh with tiny negative eigenvalues clipped (no complex parts as with a general sqrtm)."""
    c1 = (np.asarray(c1, np.float64) + np.asarray(c1, np.float64).T) / 2
    c2 = (np.asarray(c2, np.float64) + np.asarray(c2, np.float64).T) / 2
    s = _sqrtm_psd(c1)
    m = s @ c2 @ s
    tr_sqrt = float(np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0.0, None))))
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    return float(max(diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * tr_sqrt, 0.0))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the rows of a and b (sample mean, unbiased covariance)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError("the Fréchet distance needs at least 2 rows on each side")
    return frechet_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def evaluate(gen: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """All held-out numbers for one method's generated embeddings against the real (centred) ones."""
    return {"paired_cosine": paired_cosine(gen, real), **recall_at_k(gen, real), "frechet": frechet_distance(gen, real)}
