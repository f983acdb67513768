"""A prior side by side with the zero-parameter transfers (none, mean-shift, c3) on held-out pairs."""

from __future__ import annotations

from typing import Any

import numpy as np

from unicorn_datasets.prior.base import Prior
from unicorn_datasets.prior.metrics import evaluate
from unicorn_datasets.randomness import row_seeds
from unicorn_datasets.transfer.methods import BASELINE_METHODS, apply_transfer, l2_normalize


def compare_methods(prior: Prior, text: np.ndarray, image: np.ndarray, *, seed: int = 0,
                    noise_sigma: float = 0.05) -> dict[str, Any]:
    """Numbers for none / mean-shift / c3 / prior against the real image embeddings (L2-normalised, minus the
    set mean, as the VLM meets them at test time). Mean-shift and c3 use this set's text mean; c3 noise and
    prior noise come from per-row seeds (stream "c3" / "prior")."""
    t, v = l2_normalize(text), l2_normalize(image)
    if t.shape[0] != v.shape[0] or t.shape[0] < 2:
        raise ValueError(f"evaluation needs at least 2 paired rows, got {t.shape[0]} texts and {v.shape[0]} images")
    real = v - v.mean(axis=0)
    ids = [str(i) for i in range(t.shape[0])]
    mean = t.mean(axis=0)
    out: dict[str, Any] = {"n": int(t.shape[0]), "dim": int(t.shape[1]), "seed": seed, "c3_noise_sigma": noise_sigma,
                           "real": "L2-normalised image embeddings minus their mean over this set", "methods": {}}
    for m in BASELINE_METHODS:
        gen = apply_transfer(t, m, mean=mean, noise_sigma=noise_sigma,
                             rng_seed_per_row=row_seeds(ids, seed, stream="c3") if m == "c3" else None)
        out["methods"][m] = evaluate(gen, real)
    out["methods"]["prior"] = evaluate(prior.sample(t, seeds=row_seeds(ids, seed, stream="prior"))[:, 0], real)
    out["methods"]["prior"]["family"] = prior.family
    return out
