"""Closed-form linear priors on centred embeddings: ridge shrunk toward the mean shift, and orthogonal Procrustes.

`linear`: W = A + D with D = argmin ||X (A + D) - Y||^2 + alpha ||D||^2. The anchor A is the mean shift's
map (c I, c the least-squares scale; cosine ignores c, so W = A scores exactly as the mean shift on centred
pairs), or 0 with `shrink_to: zero` (plain ridge, the old behaviour; also used when text and image
dimensions differ). One SVD of X makes every alpha of the grid a matrix product; alpha = inf (W = A) is
always a candidate, and alpha is picked by paired cosine on left-out training rows plus the validation
split, so there the prior is never below the map it shrinks toward. Few or noisy pairs pick a large
alpha (close to the mean shift); many clean pairs a small one (the full map).

`orthogonal`: W = c R with R = U V^T from the SVD of X^T Y (orthogonal Procrustes): a rotation plus one
scale, d(d-1)/2 free numbers instead of d^2, so it needs fewer pairs when the relation is a rotation.

Both are deterministic: the n samples of a row are identical.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from unicorn_datasets.prior.base import Prior, PriorError
from unicorn_datasets.transfer.methods import l2_normalize

ALPHAS = [1e-3, 1e-2, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 1e4, 1e5]
SHRINK_TO = ("mean-shift", "zero")


def _row_cosine(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.sum(l2_normalize(pred) * l2_normalize(target), axis=1)))


def anchor_map(x: np.ndarray, y: np.ndarray, shrink_to: str) -> np.ndarray:
    """c I (the mean shift, scaled to fit) when the dimensions match and shrink_to is mean-shift; else 0."""
    if shrink_to not in SHRINK_TO:
        raise PriorError(f"shrink_to must be one of {', '.join(SHRINK_TO)}, not {shrink_to!r}")
    if shrink_to == "zero" or x.shape[1] != y.shape[1]:
        return np.zeros((x.shape[1], y.shape[1]))
    c = float(np.sum(x * y) / max(np.sum(x * x), 1e-12))
    return c * np.eye(x.shape[1])


def ridge_fit(
    x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, alphas: list[float],
    anchor: np.ndarray | None = None,
) -> tuple[np.ndarray, float, dict[str, dict[str, float]]]:
    """(W [D_text, D_image], chosen alpha, scores per alpha), W shrunk toward `anchor` (default 0).

    alpha = inf (W = anchor) is a candidate whenever the anchor is not 0. Each alpha is scored by paired
    cosine on the training rows left out one at a time (ridge's closed form: residual / (1 - leverage))
    together with the validation rows: a few validation pairs alone pick an over-fitted alpha too often.
    Without a validation split, the smallest alpha is used."""
    a0 = np.zeros((x.shape[1], y.shape[1])) if anchor is None else anchor
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    keep = s > 1e-9 * s.max()  # centred rows: the all-ones direction (and any other null one) has s = 0
    u, s, vt = u[:, keep], s[keep], vt[keep]
    r = y - x @ a0
    uty = u.T @ r
    grid = sorted(float(a) for a in alphas) + ([math.inf] if np.any(a0) else [])
    if val is None:
        grid = grid[:1]
    scores: dict[str, dict[str, float]] = {}
    best: tuple[float, float, np.ndarray] | None = None
    n_fit, n_val = x.shape[0], 0 if val is None else val[0].shape[0]
    for alpha in grid:
        if math.isinf(alpha):
            w, loo = a0, x @ a0 + r - r / (1 - 1 / n_fit)  # the limit of the formula below: only the mean left out
        else:
            shrink = s**2 / (s**2 + alpha)
            w = a0 + vt.T @ ((s / (s**2 + alpha))[:, None] * uty)
            # 1 - leverage of ridge with an unpenalised intercept (x and y are centred with their mean: without
            # the 1/n, a left-out row is "predicted" through the mean when the map can interpolate, n <= d),
            # written as a sum of non-negative terms, so it does not cancel when the leverage nears 1
            u2 = u**2
            free = np.maximum(1 - 1 / n_fit - u2.sum(axis=1), 0.0) + u2 @ (alpha / (s**2 + alpha))
            fitted = u @ (shrink[:, None] * uty)  # the in-sample prediction of r
            loo = x @ a0 + r - (r - fitted) / np.maximum(free, 1e-12)[:, None]
        if val is None:
            return w, alpha, scores
        val_cos = _row_cosine(val[0] @ w, val[1]) if np.any(w) else 0.0
        loo_cos = _row_cosine(loo, y) if np.any(w) else 0.0
        cos = (loo_cos * n_fit + val_cos * n_val) / (n_fit + n_val)
        scores[f"{alpha:g}"] = {"paired_cosine": cos, "loo_paired_cosine": loo_cos, "val_paired_cosine": val_cos}
        if best is None or cos > best[0] + 1e-12:  # ties keep the smaller alpha (grid ascending)
            best = (cos, alpha, w)
    assert best is not None
    return best[2], best[1], scores


class LinearPrior(Prior):
    family: ClassVar[str] = "linear"
    defaults: ClassVar[dict[str, Any]] = {"alphas": ALPHAS, "shrink_to": "mean-shift"}

    def __init__(self, **hyper: Any) -> None:
        super().__init__(**hyper)
        self.weight: np.ndarray | None = None

    def _fit(self, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, *, seed: int,
             progress: bool) -> dict[str, Any]:
        anchor = anchor_map(x, y, str(self.hyper["shrink_to"]))
        self.weight, alpha, scores = ridge_fit(x, y, val, [float(a) for a in self.hyper["alphas"]], anchor)
        return {"alpha": alpha if math.isfinite(alpha) else "inf (the mean shift's map)",
                "anchor_scale": float(anchor[0, 0]) if anchor.size else 0.0,
                "val_by_alpha": scores}

    def _predict(self, x: np.ndarray, noise: np.ndarray | None, n: int) -> np.ndarray:
        assert self.weight is not None
        return np.repeat((x @ self.weight)[:, None, :], n, axis=1)

    def _tensors(self) -> dict[str, np.ndarray]:
        assert self.weight is not None
        return {"weight": self.weight}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.weight = tensors["weight"]


class OrthogonalPrior(LinearPrior):
    """Orthogonal Procrustes with one scale: W = c R, R = U V^T where X^T Y = U S V^T."""

    family: ClassVar[str] = "orthogonal"
    defaults: ClassVar[dict[str, Any]] = {}

    def _fit(self, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, *, seed: int,
             progress: bool) -> dict[str, Any]:
        u, s, vt = np.linalg.svd(x.T @ y, full_matrices=False)
        scale = float(s.sum() / max(np.sum(x * x), 1e-12))  # least squares for c given R
        self.weight = scale * (u @ vt)
        out: dict[str, Any] = {"scale": scale}
        if val is not None:
            out["val_paired_cosine"] = _row_cosine(val[0] @ self.weight, val[1])
        return out
