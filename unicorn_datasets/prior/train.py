"""`unicorn prior train | eval`: pairs file -> encoder -> fitted prior folder, and held-out evaluation."""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from unicorn_datasets.prior import FAMILIES, check_encoder, load_prior, make_prior
from unicorn_datasets.prior.base import Prior, PriorError
from unicorn_datasets.prior.evaluate import centred_cosine, compare_methods
from unicorn_datasets.transfer.gap import encode_pairs

MEAN_SHIFT_TOLERANCE = 0.005  # a prior this close to the mean shift on validation is the mean shift, in effect


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
    """Fit on a seeded train split; `prior.evaluation` holds the numbers on the held-out validation split and
    `prior.meta["comparison"]` the prior against the mean shift there."""
    return fit_families(text, image, [family], seed=seed, val_fraction=val_fraction, progress=progress,
                        noise_sigma=noise_sigma, **hyper)


def families_of(spec: str) -> list[str]:
    """`linear`, `linear,orthogonal` or `all` -> family names (unknown ones refused by name)."""
    names = list(FAMILIES) if spec.strip() == "all" else [f.strip() for f in spec.split(",") if f.strip()]
    bad = [f for f in names if f not in FAMILIES]
    if bad or not names:
        raise PriorError(f"--family {spec!r}: choose from {', '.join(FAMILIES)} (comma-separated) or all")
    return list(dict.fromkeys(names))


def fit_families(text: np.ndarray, image: np.ndarray, families: list[str], *, seed: int = 0,
                 val_fraction: float = 0.1, progress: bool = False, noise_sigma: float = 0.05,
                 **hyper: Any) -> Prior:
    """Fit every family on one seeded train split, score each and the mean shift on the validation split
    (centred paired cosine), keep the best family; the comparison goes into `meta["comparison"]`."""
    tr, va = split(text.shape[0], val_fraction, seed)
    fitted: dict[str, Prior] = {}
    scores: dict[str, float] = {}
    evaluation: dict[str, Any] = {}
    for family in families:
        t0 = time.monotonic()
        # several families: each gets the hyper-parameters it has (flow flags reach flow only)
        own = hyper if len(families) == 1 else {k: v for k, v in hyper.items() if k in FAMILIES[family].defaults}
        prior = make_prior(family, **own).fit(text[tr], image[tr], val_text=text[va], val_image=image[va],
                                              seed=seed, progress=progress)
        prior.meta["training"]["seconds"] = round(time.monotonic() - t0, 3)
        prior.meta["training"]["val_fraction"] = val_fraction
        prior.evaluation = {"split": "validation", **compare_methods(prior, text[va], image[va], seed=seed,
                                                                      noise_sigma=noise_sigma)}
        fitted[family], scores[family] = prior, centred_cosine(prior.evaluation, "prior") or 0.0
        evaluation = prior.evaluation
    best = max(scores, key=lambda f: scores[f])
    prior = fitted[best]
    prior.meta["comparison"] = comparison(scores, centred_cosine(evaluation, "mean-shift"), best, len(va))
    return prior


def comparison(scores: dict[str, float], mean_shift: float | None, chosen: str, n: int) -> dict[str, Any]:
    """Which wins on validation, the chosen family or the mean shift, by how much; `worse_than_mean_shift`
    (below it by more than MEAN_SHIFT_TOLERANCE) is what `--transfer prior` refuses without --allow-worse-prior."""
    out: dict[str, Any] = {"split": "validation", "n": n, "metric": "centred paired cosine",
                           "families": {f: round(v, 6) for f, v in scores.items()}, "chosen": chosen,
                           "mean_shift": None if mean_shift is None else round(mean_shift, 6)}
    others = ", ".join(f"{f} {v:.3f}" for f, v in scores.items() if f != chosen)
    others = f"; also fitted: {others}" if others else ""
    if mean_shift is None:
        out.update(winner=chosen, margin=None, worse_than_mean_shift=False,
                   summary=f"{chosen} prior: validation paired cosine {scores[chosen]:.3f} on {n} pairs (no mean "
                           f"shift to compare: text and image dimensions differ){others}")
        return out
    margin = scores[chosen] - mean_shift
    worse = margin < -MEAN_SHIFT_TOLERANCE
    out.update(winner=chosen if margin > 0 else "mean-shift", margin=round(margin, 6), worse_than_mean_shift=worse)
    if margin > 0:
        out["summary"] = (f"{chosen} prior beats the mean shift on {n} validation pairs: paired cosine "
                          f"{scores[chosen]:.3f} vs {mean_shift:.3f} (+{margin:.3f}){others}")
    else:
        out["summary"] = (f"the mean shift wins on {n} validation pairs: paired cosine {mean_shift:.3f} vs "
                          f"{chosen} prior {scores[chosen]:.3f} ({margin:+.3f}){others}; "
                          + ("--transfer prior with it is refused unless --allow-worse-prior" if worse
                             else "the prior is within 0.005, in effect the mean shift"))
    return out


def train_prior(pairs: str, encoder: Any, out: str, *, family: str, seed: int = 0, val_fraction: float = 0.1,
                batch_size: int = 32, overwrite: bool = False, **hyper: Any) -> dict[str, Any]:
    if Path(out).exists() and not overwrite:  # before the (slow) encoding
        raise PriorError(f"{out} exists; pass --overwrite to replace it")
    families = families_of(family)
    captions, text, image = encode_pairs(pairs, encoder, batch_size=batch_size)
    prior = fit_families(text, image, families, seed=seed, val_fraction=val_fraction, progress=True, **hyper)
    prior.meta["encoder"] = encoder.describe()
    prior.meta["training_data"] = {"source": str(pairs), "n_pairs": len(captions),
                                   "fingerprint": data_fingerprint(captions, image)}
    prior.save(out, overwrite=overwrite)
    print(f"prior train: {prior.meta['comparison']['summary']}", file=sys.stderr, flush=True)
    return {"out": str(out), "family": prior.family, "comparison": prior.meta["comparison"],
            "training": prior.meta["training"], "eval": prior.evaluation}


def eval_prior(prior_dir: str, pairs: str, encoder: Any, *, seed: int = 0, batch_size: int = 32,
               noise_sigma: float = 0.05) -> dict[str, Any]:
    prior = load_prior(prior_dir)
    check_encoder(prior, encoder.describe())
    _, text, image = encode_pairs(pairs, encoder, batch_size=batch_size)
    return {"prior": str(prior_dir), "pairs": str(pairs),
            **compare_methods(prior, text, image, seed=seed, noise_sigma=noise_sigma)}
