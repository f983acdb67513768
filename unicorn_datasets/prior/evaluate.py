"""A prior side by side with the zero-parameter transfers (none, mean-shift, c3) on held-out pairs.

Two comparisons per method:
- `centred`: against the image embeddings minus their set mean (Unicorn's test-time recipe: `embed-images`
  centres the real images), each method's output as Stage 3 writes it.
- `uncentred`: against the L2-normalised image embeddings as the image tower gives them (Synth²'s use: a
  VLM reads the generated embeddings as they are). The prior's output gets its training image mean back
  (it predicts centred embeddings); the baselines have no image mean to add, so theirs is unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from unicorn_datasets.prior.base import Prior
from unicorn_datasets.prior.metrics import evaluate
from unicorn_datasets.randomness import row_seeds
from unicorn_datasets.transfer.methods import BASELINE_METHODS, apply_transfer, l2_normalize

CENTRED = "L2-normalised image embeddings minus their mean over this set (Unicorn's test time)"
UNCENTRED = "L2-normalised image embeddings as the image tower gives them (a VLM reading them as they are)"


def baselines(text: np.ndarray, *, seed: int = 0, noise_sigma: float = 0.05) -> dict[str, np.ndarray]:
    """none / mean-shift / c3 outputs for L2-normalised text; mean shift and c3 use this set's text mean,
    c3 noise comes from per-row seeds (stream "c3")."""
    ids = [str(i) for i in range(text.shape[0])]
    mean = text.mean(axis=0)
    return {m: apply_transfer(text, m, mean=mean, noise_sigma=noise_sigma,
                              rng_seed_per_row=row_seeds(ids, seed, stream="c3") if m == "c3" else None)
            for m in BASELINE_METHODS}


def prior_outputs(prior: Prior, text: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """The prior's centred output (one sample per row, noise from per-row seeds, stream "prior")."""
    return prior.sample(text, seeds=row_seeds([str(i) for i in range(text.shape[0])], seed, stream="prior"))[:, 0]


def compare_methods(prior: Prior | None, text: np.ndarray, image: np.ndarray, *, seed: int = 0,
                    noise_sigma: float = 0.05) -> dict[str, Any]:
    """Paired cosine, recall@1/@5 and Fréchet distance, centred and uncentred, for none / mean-shift / c3 /
    the prior. The baselines need text and image of one dimension; with two, only the prior is scored."""
    t, v = l2_normalize(text), l2_normalize(image)
    if t.shape[0] != v.shape[0] or t.shape[0] < 2:
        raise ValueError(f"evaluation needs at least 2 paired rows, got {t.shape[0]} texts and {v.shape[0]} images")
    real = {"centred": v - v.mean(axis=0), "uncentred": v}
    out: dict[str, Any] = {"n": int(t.shape[0]), "dim": int(t.shape[1]), "seed": seed, "c3_noise_sigma": noise_sigma,
                           "real": {"centred": CENTRED, "uncentred": UNCENTRED}, "methods": {}}
    if t.shape[1] == v.shape[1]:
        for m, gen in baselines(t, seed=seed, noise_sigma=noise_sigma).items():
            out["methods"][m] = {kind: evaluate(gen, r) for kind, r in real.items()}
    else:
        out["baselines"] = f"not scored: text is {t.shape[1]}-d, images {v.shape[1]}-d"
    if prior is not None:
        gen = prior_outputs(prior, t, seed=seed)
        assert prior.image_mean is not None
        out["methods"]["prior"] = {"family": prior.family, "centred": evaluate(gen, real["centred"]),
                                   "uncentred": evaluate(gen + prior.image_mean, real["uncentred"])}
    return out


def centred_cosine(result: dict[str, Any], method: str) -> float | None:
    """A method's centred paired cosine in a `compare_methods` result (None when it was not scored); also
    reads evaluations saved before the centred/uncentred split (flat numbers, centred)."""
    r = (result.get("methods") or {}).get(method)
    if not r:
        return None
    return (r.get("centred") or r).get("paired_cosine")
