"""Modality representation transfer (Unicorn Stage 3): pure numpy math.

Conventions: embeddings are 2-D arrays [N, D] (float16/32/64 in, float32 out); means are float64 [D].
The text mean mu_T is reduced exactly across shards/processes with :class:`MeanAccumulator`
(float64 sums + integer counts, merged in a fixed order so every run gives identical bits).

Methods (``apply_transfer``):
- ``none``:       the text embedding unchanged.
- ``mean-shift``: u - mu_T (the paper). ``renormalize=False`` is the authors' released code,
                  ``renormalize=True`` is paper v2's Norm(u - mu_T). Optional ``image_mean`` adds mu_V back
                  (the paper's ideal form, usable only when an image mean is known).
- ``c3``:         C3-style (connect, collapse, corrupt): u - mu_T + N(0, sigma^2 I), always re-normalised.
                  The noise of each row comes from that row's own seed, so it does not depend on batching.
- ``prior``:      a learned text->image-embedding generator (``unicorn_datasets.prior``), its noise also from
                  per-row seeds; trained on a user's pairs with `unicorn prior train`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unicorn_datasets.dataset.atomic import atomic_path
from unicorn_datasets.randomness import row_seeds

__all__ = [
    "BASELINE_METHODS",
    "METHODS",
    "MeanAccumulator",
    "apply_transfer",
    "gap_statistics",
    "l2_normalize",
    "reduce_states",
    "row_seeds",
]

BASELINE_METHODS = ("none", "mean-shift", "c3")  # need no training data
METHODS = (*BASELINE_METHODS, "prior")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise L2 normalisation in float64 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


class MeanAccumulator:
    """Exact running mean of row vectors: float64 column sums plus an integer row count.

    Per-shard partial states are small (D float64 + count): save them with :meth:`save` (or
    :meth:`to_state`), then reduce them with :func:`reduce_states`, which merges in sorted-path order
    so the result is bit-identical however the work was split across processes.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim: int | None = dim
        self.sum: np.ndarray | None = None if dim is None else np.zeros(dim, dtype=np.float64)
        self.count: int = 0

    def _check_dim(self, dim: int) -> None:
        if self.dim is None:
            self.dim = dim
            self.sum = np.zeros(dim, dtype=np.float64)
        elif dim != self.dim:
            raise ValueError(f"dimension mismatch: accumulator has D={self.dim}, got D={dim}")

    def add(self, batch: np.ndarray) -> MeanAccumulator:
        """Add rows of a [N, D] (or a single [D]) array."""
        arr = np.asarray(batch)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(f"expected a [N, D] array, got shape {arr.shape}")
        self._check_dim(arr.shape[1])
        if arr.shape[0]:
            if not np.all(np.isfinite(arr)):
                raise ValueError("embeddings contain NaN or inf")
            assert self.sum is not None
            self.sum += arr.astype(np.float64, copy=False).sum(axis=0)
            self.count += int(arr.shape[0])
        return self

    def merge(self, other: MeanAccumulator) -> MeanAccumulator:
        """Add another accumulator's sums and count into this one (in place; returns self)."""
        if other.dim is None:
            return self
        self._check_dim(other.dim)
        assert self.sum is not None and other.sum is not None
        self.sum += other.sum
        self.count += other.count
        return self

    def mean(self) -> np.ndarray:
        """float64 [D]; raises if nothing was added."""
        if self.count == 0 or self.sum is None:
            raise ValueError("mean of an empty accumulator")
        return self.sum / self.count

    def to_state(self) -> dict[str, Any]:
        """{"dim": int | None, "count": int, "sum": float64 ndarray [D] | None} (JSON: use .tolist())."""
        return {"dim": self.dim, "count": self.count, "sum": None if self.sum is None else self.sum.copy()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> MeanAccumulator:
        acc = cls(state.get("dim"))
        if state.get("sum") is not None:
            s = np.asarray(state["sum"], dtype=np.float64)
            acc._check_dim(int(s.shape[0]))
            acc.sum = s.copy()
        acc.count = int(state.get("count", 0))
        if acc.count < 0 or (acc.count > 0 and acc.sum is None):
            raise ValueError(f"invalid accumulator state: count={acc.count}")
        return acc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state atomically as .npz (sum float64 [D], count int64)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                sum=self.sum if self.sum is not None else np.zeros(0, np.float64),
                count=np.int64(self.count),
                dim=np.int64(-1 if self.dim is None else self.dim),
            )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> MeanAccumulator:
        with np.load(path) as z:
            dim = int(z["dim"])
            return cls.from_state(
                {
                    "dim": None if dim < 0 else dim,
                    "count": int(z["count"]),
                    "sum": z["sum"] if dim >= 0 else None,
                }
            )


def reduce_states(
    states: Iterable[str | os.PathLike[str] | dict[str, Any] | MeanAccumulator],
) -> MeanAccumulator:
    """Merge saved partial states. Paths are merged in sorted order for a reproducible float64 sum;
    dicts/accumulators are merged in the order given (give them in a fixed order, e.g. by shard index)."""
    items = list(states)
    if all(isinstance(s, str | os.PathLike) for s in items):
        items = sorted(items, key=lambda p: os.fspath(p))  # type: ignore[arg-type]
    total = MeanAccumulator()
    for s in items:
        if isinstance(s, MeanAccumulator):
            total.merge(s)
        elif isinstance(s, dict):
            total.merge(MeanAccumulator.from_state(s))
        else:
            total.merge(MeanAccumulator.load(s))
    return total


def apply_transfer(
    emb: np.ndarray,
    method: str,
    *,
    mean: np.ndarray | None = None,
    renormalize: bool = False,
    noise_sigma: float = 0.0,
    rng_seed_per_row: Sequence[int] | None = None,
    image_mean: np.ndarray | None = None,
    prior: Any = None,
) -> np.ndarray:
    """Turn L2-normalised text embeddings [N, D] into synthetic image embeddings (float32 [N, D]).

    All arithmetic is float64; the cast to float32 happens once at the end. ``renormalize`` applies to
    ``mean-shift`` only (default False = the released code); ``c3`` always re-normalises; ``none``
    returns the input unchanged (as float32). ``prior`` (a fitted ``unicorn_datasets.prior.Prior``) draws one
    sample per row, its noise seeded by ``rng_seed_per_row``; ``mean`` is not used.
    """
    if method not in METHODS:
        raise ValueError(f"unknown transfer method {method!r}; choose from {', '.join(METHODS)}")
    x = np.asarray(emb)
    if x.ndim != 2:
        raise ValueError(f"expected embeddings of shape [N, D], got {x.shape}")
    if method == "none":
        return x.astype(np.float32, copy=True)
    if method == "prior":
        if prior is None or rng_seed_per_row is None:
            raise ValueError("method 'prior' needs a fitted prior (prior=...) and one seed per row")
        return prior.sample(x, seeds=rng_seed_per_row)[:, 0]
    if mean is None:
        raise ValueError(f"method {method!r} needs the text mean (mean=...)")
    mu = np.asarray(mean, dtype=np.float64)
    if mu.shape != (x.shape[1],):
        raise ValueError(f"mean has shape {mu.shape}, embeddings have D={x.shape[1]}")
    out = x.astype(np.float64) - mu
    if image_mean is not None:
        mv = np.asarray(image_mean, dtype=np.float64)
        if mv.shape != mu.shape:
            raise ValueError(f"image_mean has shape {mv.shape}, expected {mu.shape}")
        out += mv
    if method == "c3":
        if noise_sigma < 0:
            raise ValueError("noise_sigma must be >= 0")
        if noise_sigma > 0:
            if rng_seed_per_row is None or len(rng_seed_per_row) != x.shape[0]:
                raise ValueError(
                    "c3 noise needs one seed per row (rng_seed_per_row, e.g. row_seeds(ids, seed))"
                )
            noise = np.empty_like(out)
            for i, seed in enumerate(rng_seed_per_row):
                noise[i] = np.random.default_rng(int(seed)).standard_normal(x.shape[1])
            out += noise_sigma * noise
        return l2_normalize(out).astype(np.float32)
    return (l2_normalize(out) if renormalize else out).astype(np.float32)


def _paired_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(np.sum(l2_normalize(a) * l2_normalize(b), axis=1)))


def gap_statistics(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    mean_text: np.ndarray | None = None,
    methods: Sequence[str] = BASELINE_METHODS,
    *,
    renormalize: bool = False,
    noise_sigma: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Modality-gap report for paired rows (text_emb[i] describes image_emb[i]).

    For every method: mean cosine between the transferred text embedding and (a) the raw image
    embedding, (b) the image embedding minus the image-set mean (the paper's test-time recipe).
    ``mean_text`` defaults to the mean of ``text_emb``. c3 noise uses ``row_seeds(range(N), seed)``.
    """
    t = np.asarray(text_emb, dtype=np.float64)
    v = np.asarray(image_emb, dtype=np.float64)
    if t.ndim != 2 or t.shape != v.shape:
        raise ValueError(
            f"text and image embeddings must be paired [N, D] arrays, got {t.shape} and {v.shape}"
        )
    if t.shape[0] == 0:
        raise ValueError("gap statistics need at least one pair")
    mu_t = t.mean(axis=0) if mean_text is None else np.asarray(mean_text, dtype=np.float64)
    mu_v = v.mean(axis=0)
    v_centered = v - mu_v
    seeds = row_seeds([str(i) for i in range(t.shape[0])], seed)
    report: dict[str, Any] = {
        "n": int(t.shape[0]),
        "dim": int(t.shape[1]),
        "text_mean_norm": float(np.linalg.norm(mu_t)),
        "image_mean_norm": float(np.linalg.norm(mu_v)),
        "gap_norm": float(np.linalg.norm(mu_t - mu_v)),
        "before": {
            "paired_cosine": _paired_cosine(t, v),
            "paired_cosine_centered_image": _paired_cosine(t, v_centered),
        },
        "methods": {},
    }
    for m in methods:
        out = apply_transfer(
            t, m, mean=mu_t, renormalize=renormalize, noise_sigma=noise_sigma, rng_seed_per_row=seeds
        )
        report["methods"][m] = {
            "paired_cosine": _paired_cosine(out, v),
            "paired_cosine_centered_image": _paired_cosine(out, v_centered),
        }
    return report
