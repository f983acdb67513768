"""Semantic off-seed check for Stage 1: cosine between a seed and its caption in the text encoder's space.

The content-word overlap (`captions.seed_overlap`) misses a caption that repeats one seed word and
describes something else ("a vase of tulips" -> birds drinking tea from tulip-painted cups). The
recipe's Stage-3 text encoder, which the build loads anyway, places both texts in one L2-normalised
space, so their dot product says whether the caption is about the seed.

Callable per batch (`seed_caption_cosine`) and per row (`SeedCosine`: the batch's seeds are encoded
once, on first use, and each caption with one encoder call).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["SeedCosine", "seed_caption_cosine"]


def seed_caption_cosine(encoder: Any, seeds: Sequence[str], captions: Sequence[str]) -> np.ndarray:
    """Row-wise cosine [N] between seeds[i] and captions[i] (the encoder returns L2-normalised rows)."""
    if len(seeds) != len(captions):
        raise ValueError(f"seed_caption_cosine: {len(seeds)} seeds but {len(captions)} captions")
    if not seeds:
        return np.zeros(0, np.float32)
    s = np.asarray(encoder.encode_text(list(seeds)), np.float32)
    c = np.asarray(encoder.encode_text(list(captions)), np.float32)
    return np.einsum("nd,nd->n", s, c)


class SeedCosine:
    """Per-row form for a validation callback: `cosine(i, caption)` against seeds[i]."""

    def __init__(self, encoder: Any, seeds: Sequence[str]) -> None:
        self.encoder = encoder
        self.seeds = list(seeds)
        self._seed_emb: np.ndarray | None = None

    def __call__(self, i: int, caption: str) -> float:
        if self._seed_emb is None:  # one encoder call for all seeds of the batch
            self._seed_emb = np.asarray(self.encoder.encode_text(self.seeds), np.float32)
        c = np.asarray(self.encoder.encode_text([caption]), np.float32)[0]
        return float(self._seed_emb[i] @ c)
