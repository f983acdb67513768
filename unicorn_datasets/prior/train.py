"""`unicorn prior train | eval`: pairs file -> encoder -> fitted prior folder, and held-out evaluation."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from unicorn_datasets.prior import check_encoder, load_prior, make_prior
from unicorn_datasets.prior.base import Prior, PriorError
from unicorn_datasets.prior.evaluate import compare_methods
from unicorn_datasets.transfer.gap import encode_pairs


def data_fingerprint(captions: list[str], image: np.ndarray) -> str:
    """sha256 of the captions and the float32 image embeddings, in row order."""
    h = hashlib.sha256()
    for c in captions:
        h.update(c.encode("utf-8") + b"\x1f")
    h.update(np.ascontiguousarray(image, dtype=np.float32).tobytes())
    return "sha256:" + h.hexdigest()


def split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): a seeded permutation, at least 2 rows on each side."""
    if not 0 < val_fraction < 1:
        raise PriorError("--val-fraction must be in (0, 1)")
    k = int(round(n * val_fraction))
    if n < 4 or k < 2 or n - k < 2:
        raise PriorError(f"{n} pairs are too few to train and validate a prior (need 2+ on each side)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[k:]), np.sort(perm[:k])


def fit_and_evaluate(text: np.ndarray, image: np.ndarray, family: str, *, seed: int = 0, val_fraction: float = 0.1,
                     progress: bool = False, noise_sigma: float = 0.05, **hyper: Any) -> Prior:
    """Fit on a seeded train split; `prior.evaluation` holds the numbers on the held-out validation split."""
    tr, va = split(text.shape[0], val_fraction, seed)
    t0 = time.monotonic()
    prior = make_prior(family, **hyper).fit(text[tr], image[tr], val_text=text[va], val_image=image[va], seed=seed,
                                            progress=progress)
    prior.meta["training"]["seconds"] = round(time.monotonic() - t0, 3)
    prior.meta["training"]["val_fraction"] = val_fraction
    prior.evaluation = {"split": "validation", **compare_methods(prior, text[va], image[va], seed=seed,
                                                                  noise_sigma=noise_sigma)}
    return prior


def train_prior(pairs: str, encoder: Any, out: str, *, family: str, seed: int = 0, val_fraction: float = 0.1,
                batch_size: int = 32, overwrite: bool = False, **hyper: Any) -> dict[str, Any]:
    if Path(out).exists() and not overwrite:  # before the (slow) encoding
        raise PriorError(f"{out} exists; pass --overwrite to replace it")
    captions, text, image = encode_pairs(pairs, encoder, batch_size=batch_size)
    prior = fit_and_evaluate(text, image, family, seed=seed, val_fraction=val_fraction, progress=True, **hyper)
    prior.meta["encoder"] = encoder.describe()
    prior.meta["training_data"] = {"source": str(pairs), "n_pairs": len(captions),
                                   "fingerprint": data_fingerprint(captions, image)}
    prior.save(out, overwrite=overwrite)
    return {"out": str(out), "family": family, "training": prior.meta["training"], "eval": prior.evaluation}


def eval_prior(prior_dir: str, pairs: str, encoder: Any, *, seed: int = 0, batch_size: int = 32,
               noise_sigma: float = 0.05) -> dict[str, Any]:
    prior = load_prior(prior_dir)
    check_encoder(prior, encoder.describe())
    _, text, image = encode_pairs(pairs, encoder, batch_size=batch_size)
    return {"prior": str(prior_dir), "pairs": str(pairs),
            **compare_methods(prior, text, image, seed=seed, noise_sigma=noise_sigma)}
