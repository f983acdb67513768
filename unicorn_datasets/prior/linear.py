"""Closed-form linear prior: ridge regression from centred text to centred image embeddings.

W = argmin ||X W - Y||^2 + alpha ||W||^2, solved through one SVD of X, so every alpha of the grid costs a
matrix product; alpha is picked on the validation split (mean squared error). Deterministic: the n samples
of a row are identical.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from unicorn_datasets.prior.base import Prior


def ridge_fit(
    x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, alphas: list[float]
) -> tuple[np.ndarray, float, dict[str, float]]:
    """(W [D_text, D_image], chosen alpha, validation MSE per alpha). Without a validation split, the
    first alpha is used."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    scores: dict[str, float] = {}
    best: tuple[float, float, np.ndarray] | None = None
    for alpha in alphas if val is not None else alphas[:1]:
        w = vt.T @ ((s / (s**2 + alpha))[:, None] * uty)
        mse = float(np.mean((val[0] @ w - val[1]) ** 2)) if val is not None else float("nan")
        scores[f"{alpha:g}"] = mse
        if best is None or mse < best[0]:
            best = (mse, alpha, w)
    assert best is not None
    return best[2], best[1], scores


class LinearPrior(Prior):
    family: ClassVar[str] = "linear"
    defaults: ClassVar[dict[str, Any]] = {"alphas": [1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0]}

    def __init__(self, **hyper: Any) -> None:
        super().__init__(**hyper)
        self.weight: np.ndarray | None = None

    def _fit(self, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, *, seed: int,
             progress: bool) -> dict[str, Any]:
        self.weight, alpha, scores = ridge_fit(x, y, val, [float(a) for a in self.hyper["alphas"]])
        return {"alpha": alpha, "val_mse_by_alpha": scores}

    def _predict(self, x: np.ndarray, noise: np.ndarray | None, n: int) -> np.ndarray:
        assert self.weight is not None
        return np.repeat((x @ self.weight)[:, None, :], n, axis=1)

    def _tensors(self) -> dict[str, np.ndarray]:
        assert self.weight is not None
        return {"weight": self.weight}

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        self.weight = tensors["weight"]
