"""Semantic off-seed check for Stage 1: cosine between a seed and its caption in the text encoder's space.

The content-word overlap (`captions.seed_overlap`) misses a caption that repeats one seed word and
describes something else ("a vase of tulips" -> birds drinking tea from tulip-painted cups). The
recipe's Stage-3 text encoder, which the build loads anyway, places both texts in one L2-normalised
space, so their dot product says whether the caption is about the seed.

Callable per batch (`seed_caption_cosine`), per row (`SeedCosine`: the batch's seeds are encoded
once, on first use, and each caption with one encoder call), and as the engine's batched check
(`SeedCosineCheck`: candidates from the whole window, off the event loop, each text embedded
independently of the batch so that rows do not depend on how candidates were grouped).

`captions.seed_cosine_embedding` says how texts are compared: "sentence" (the cosine of the encoder's
embeddings of the whole texts) or "words" (encoders/word_bag.py: each content word encoded once, alone; the
score mixes the cosine of the two word bags with how well the caption's words cover the seed's): ~0.1 ms of
CPU a caption instead of ~27 ms, so the check keeps up with a server on a CPU box; its thresholds differ
(bench/README.md, "Stage-1 off-seed thresholds").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from unicorn_datasets.encoders.stable import encode_stable
from unicorn_datasets.encoders.word_bag import WordBagEncoder, similarity
from unicorn_datasets.generation.checks import Candidate, Verdict
from unicorn_datasets.recipe.sections import SEED_COSINE_EMBEDDINGS

__all__ = ["OFF_SEED", "SeedCosine", "SeedCosineCheck", "seed_caption_cosine"]

OFF_SEED = "off_seed"  # the rejection reason of a caption below captions.min_seed_cosine
_SEED_CACHE = 4096  # seed embeddings kept between batches (retries reuse them); bounded for 1M-seed builds


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


class SeedCosineCheck:
    """The batched check: each candidate's value is (caption, seed); a caption whose similarity with its seed is
    below `min_cosine` is rejected as `off_seed`, else accepted as the caption. ``embedding``:
    captions.seed_cosine_embedding ("sentence": the cosine of the two texts' embeddings; "words": the word-bag
    `similarity`)."""

    def __init__(self, encoder: Any, min_cosine: float, embedding: str = "sentence") -> None:
        if embedding not in SEED_COSINE_EMBEDDINGS:
            allowed = " or ".join(map(repr, SEED_COSINE_EMBEDDINGS))
            raise ValueError(f"captions.seed_cosine_embedding must be {allowed}, not {embedding!r}")
        self.words, self.min_cosine = embedding == "words", min_cosine
        self.encoder = WordBagEncoder(encoder) if self.words else encoder  # the word bag: its own view of it
        self._seeds: dict[str, Any] = {}  # seed -> its embedding, or its WordBag

    def embed(self, texts: list[str]) -> list[Any]:
        if self.words:
            return self.encoder.bags(texts)  # batch-independent by construction
        return list(encode_stable(self.encoder, texts))

    def score(self, seed: Any, caption: Any) -> float:
        return similarity(seed, caption) if self.words else float(seed @ caption)

    def __call__(self, cands: list[Candidate]) -> list[Verdict]:
        pairs = [c.value for c in cands]
        new = sorted({s for _, s in pairs if s not in self._seeds})
        if len(self._seeds) + len(new) > _SEED_CACHE:
            self._seeds.clear()
            new = sorted({s for _, s in pairs})
        self._seeds.update(zip(new, self.embed(new), strict=True))
        caps = self.embed([c for c, _ in pairs])
        out: list[Verdict] = []
        for cand, (caption, seed), emb in zip(cands, pairs, caps, strict=True):
            ok = self.score(self._seeds[seed], emb) >= self.min_cosine
            out.append((caption, None, cand.notes) if ok else (None, OFF_SEED, []))
        return out
