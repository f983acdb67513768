"""The one interface every text -> image-embedding prior implements, and its folder format.

A prior maps L2-normalised text embeddings [N, D] to image embeddings in the space the VLM meets at
test time: L2-normalised image embeddings minus their set mean (what `embed-images` writes by default).
Inputs are centred with the training text mean, targets with the training image mean; both means
travel with the weights.

Folder: `config.json` (family, dims, hyper-parameters, encoder, training-data fingerprint,
normalisation, code version, training record), `weights.safetensors` (float32/float64 arrays),
`eval.json` (held-out numbers, side by side with none / mean-shift / c3).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from unicorn_datasets import __version__
from unicorn_datasets.dataset.atomic import atomic_folder
from unicorn_datasets.transfer.methods import l2_normalize

FORMAT = "unicorn-prior/1"
CONFIG, WEIGHTS, EVAL = "config.json", "weights.safetensors", "eval.json"
NORMALISATION = {
    "text": "L2-normalise, then subtract the training text mean (tensor text_mean)",
    "image_target": "L2-normalise, then subtract the training image mean (tensor image_mean)",
    "output": "image embedding minus the image-set mean, not re-normalised (as embed-images writes it)",
}


class PriorError(ValueError):
    """A prior folder that cannot be read, or one that does not fit the encoder in use."""


class Prior:
    """Base class. Subclasses set `family`, `defaults`, and implement `_fit`, `_predict`, `_tensors`, `_restore`.

    `fit(text, image)` learns from paired rows; `sample(text, seeds, n)` draws n image embeddings per row
    ([N, n, D] float32), row i's noise from `np.random.default_rng(seeds[i])` alone, so a row's output does
    not depend on its batch, shard or process.
    """

    family: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    stochastic: ClassVar[bool] = False

    def __init__(self, **hyper: Any) -> None:
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise PriorError(f"{self.family} prior: unknown hyper-parameter(s) {sorted(unknown)}")
        self.hyper: dict[str, Any] = {**self.defaults, **hyper}
        self.text_mean: np.ndarray | None = None
        self.image_mean: np.ndarray | None = None
        self.meta: dict[str, Any] = {}  # encoder, training data, training record (written into config.json)
        self.evaluation: dict[str, Any] | None = None

    @property
    def dim(self) -> int:
        if self.text_mean is None:
            raise PriorError("the prior is not fitted")
        return int(self.text_mean.shape[0])

    # -- fit / sample ---------------------------------------------------------------------------
    def fit(
        self,
        text: np.ndarray,
        image: np.ndarray,
        *,
        val_text: np.ndarray | None = None,
        val_image: np.ndarray | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> Prior:
        t, v = _paired(text, image)
        self.text_mean, self.image_mean = t.mean(axis=0), v.mean(axis=0)
        x, y = t - self.text_mean, v - self.image_mean
        val = None
        if val_text is not None and val_image is not None:
            vt, vv = _paired(val_text, val_image)
            val = (vt - self.text_mean, vv - self.image_mean)
        self.meta["training"] = {"n_train": int(t.shape[0]), "n_val": 0 if val is None else int(val[0].shape[0]),
                                 "seed": seed, **self._fit(x, y, val, seed=seed, progress=progress)}
        return self

    def sample(
        self,
        text: np.ndarray,
        seeds: Sequence[int] | None = None,
        *,
        rng: np.random.Generator | None = None,
        n: int = 1,
    ) -> np.ndarray:
        """n image embeddings per text row: float32 [N, n, D]. Without `seeds`, row seeds come from `rng`
        (default: a fixed generator), so the same call gives the same result."""
        x = l2_normalize(np.asarray(text)) - self._fitted_text_mean(np.asarray(text))
        if n < 1:
            raise PriorError("n must be >= 1")
        if seeds is None:
            gen = rng if rng is not None else np.random.default_rng(0)
            seeds = [int(s) for s in gen.integers(0, 2**63 - 1, size=x.shape[0])]
        if len(seeds) != x.shape[0]:
            raise PriorError(f"{len(seeds)} seeds for {x.shape[0]} rows")
        noise = None
        if self.stochastic:
            noise = np.stack([np.random.default_rng(int(s)).standard_normal((n, x.shape[1])) for s in seeds]) \
                if len(seeds) else np.zeros((0, n, x.shape[1]))
        return self._predict(x, noise, n).astype(np.float32)

    def _fitted_text_mean(self, text: np.ndarray) -> np.ndarray:
        if self.text_mean is None:
            raise PriorError("the prior is not fitted")
        if text.ndim != 2 or text.shape[1] != self.dim:
            raise PriorError(f"this prior maps {self.dim}-d embeddings; got shape {text.shape}")
        return self.text_mean

    # -- subclass hooks -------------------------------------------------------------------------
    def _fit(self, x: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, *, seed: int,
             progress: bool) -> dict[str, Any]:
        raise NotImplementedError

    def _predict(self, x: np.ndarray, noise: np.ndarray | None, n: int) -> np.ndarray:
        raise NotImplementedError

    def _tensors(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _restore(self, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError

    # -- folder ---------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "family": self.family,
            "dim": self.dim,
            "image_dim": int(self.image_mean.shape[0]) if self.image_mean is not None else None,
            "hyper": self.hyper,
            "normalisation": NORMALISATION,
            "code_version": __version__,
            **self.meta,
            "weights_sha256": self.weights_sha256(),
        }

    def weights_sha256(self) -> str:
        """Content hash of every array (names, shapes, bytes): identifies the prior in a build's fingerprint."""
        h = hashlib.sha256()
        for name, arr in sorted(self._all_tensors().items()):
            a = np.ascontiguousarray(arr)
            h.update(f"{name}\0{a.dtype}\0{a.shape}\0".encode())
            h.update(a.tobytes())
        return "sha256:" + h.hexdigest()

    def _all_tensors(self) -> dict[str, np.ndarray]:
        if self.text_mean is None or self.image_mean is None:
            raise PriorError("the prior is not fitted")
        return {"text_mean": self.text_mean, "image_mean": self.image_mean, **self._tensors()}

    def save(self, folder: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """Write the folder atomically (a temporary sibling renamed into place)."""
        from safetensors.numpy import save_file

        out = Path(folder)
        if out.exists() and not overwrite:
            raise PriorError(f"{out} exists; pass --overwrite to replace it")
        with atomic_folder(out) as tmp:
            tensors = {k: np.ascontiguousarray(v) for k, v in self._all_tensors().items()}
            save_file(tensors, str(tmp / WEIGHTS))
            (tmp / CONFIG).write_text(json.dumps(self.config(), indent=2, default=str), encoding="utf-8")
            if self.evaluation is not None:
                (tmp / EVAL).write_text(json.dumps(self.evaluation, indent=2), encoding="utf-8")
        return out


def _paired(text: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, v = np.asarray(text), np.asarray(image)
    if t.ndim != 2 or v.ndim != 2 or t.shape[0] != v.shape[0]:
        raise PriorError(f"text and image embeddings must be paired [N, D] arrays, got {t.shape} and {v.shape}")
    if t.shape[0] < 2:
        raise PriorError("a prior needs at least 2 training pairs")
    if not (np.all(np.isfinite(t)) and np.all(np.isfinite(v))):
        raise PriorError("embeddings contain NaN or inf")
    return l2_normalize(t), l2_normalize(v)
