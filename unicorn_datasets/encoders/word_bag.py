"""Bag-of-words views of texts through a sentence encoder: each distinct content word is encoded once, alone.

Encoding a whole caption costs a transformer pass over every token of it (~27 ms of CPU per 100-token
caption with MiniLM): a seed check that does this for each caption cannot keep up with a server answering
~100 captions a second on a CPU box (bench/README.md, issue 19). Here each distinct content word is
encoded once and cached; after the first few hundred captions nearly every word is cached and a caption
costs ~0.1 ms. A text's `WordBag` holds its words' vectors and their mean, each less the mean of a fixed
list of common words (single-word embeddings share a large common direction that would otherwise put every
pair near cosine 0.75) and L2-normalised. `similarity` compares two bags (stages/seed_check.py uses it for
`captions.seed_cosine_embedding: words`; calibration: bench/calibrate_seed_checks.py).

Rows do not depend on batching: a word is encoded through `encode_stable` (its vector depends only on the
word), a text's words are summed in sorted order, and a pair's score uses only the two bags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from unicorn_datasets.encoders.base import unit_rows
from unicorn_datasets.encoders.stable import encode_stable
from unicorn_datasets.text.tokens import PICTURE_WORDS, words

__all__ = ["WordBag", "WordBagEncoder", "content_words", "similarity"]

# Function words, and words that say a text describes a picture: they say nothing of what the picture shows.
_FUNCTION_WORDS = frozenset(
    "a an the of in on at with and or but nor to for from by as into onto over under up down out off about above "
    "below between through during while near beside behind than then there here is are was were be been being am "
    "this that these those it its it's which who whom whose what when where why how all any both each few more "
    "most other some such no not only own same so too very can will just should would could may might must has "
    "have had having do does did doing i me my we our you your he him his she her they them their one also".split()
) | PICTURE_WORDS
# The centre: everyday words of image descriptions (objects, people, places, colours, materials, light, actions).
# Their mean estimates the direction every single-word embedding shares. A fixed list: the centre, and so every
# row, is the same in any build.
_COMMON_WORDS = tuple(sorted(set(
    "man woman child boy girl people group crowd dog cat bird horse cow fish animal tree trees grass flower "
    "flowers plant leaves forest field garden park street road path sidewalk car bus truck bicycle boat train plane "
    "building house window door wall roof floor room kitchen table chair bed sofa desk shelf book lamp light sign "
    "water river lake sea ocean beach sand rock rocks mountain hill sky cloud clouds sun snow rain city town market "
    "shop food plate bowl cup glass bottle bag box ball hat shirt dress jacket shoes hand hands face hair head eyes "
    "red blue green yellow orange purple pink brown black white gray grey golden silver dark bright pale colorful "
    "wooden metal stone plastic paper cloth leather concrete brick small large big tall long short wide old new "
    "young round square flat soft smooth rough wet dry warm cold quiet busy empty full open closed front back top "
    "bottom left right center middle side corner edge background foreground distance sits stands walks runs holds "
    "wears lies hangs grows rides plays reads eats drinks smiles carries waits shines covers fills leads "
    "morning evening night day afternoon sunlight shadow shadows reflection surface color colors shape pattern line "
    "lines texture detail details scene area space ground air stripes frame".split()
)))
# A word is 3-6 tokens with [CLS] and [SEP] (most are 3): 4-token buckets waste little on padding. Measured per
# new word, MiniLM, one thread, 8 new words a call: 16 x 4 4.3 ms, 16 x 16 7.0 ms, 4 x 8 6.0 ms.
_WORD_CHUNK, _WORD_BUCKETS = 16, (4, 8, 16, 32, 64)
_MAX_CACHED = 200_000  # words kept (~300 MB at 384-d float32); past it the cache restarts (same vectors again)


def content_words(text: str) -> list[str]:
    """The distinct content words of ``text``, sorted (lower-cased; no function words, no bare numbers)."""
    return sorted({w for w in words(text) if w not in _FUNCTION_WORDS and not w.isdigit()})


class WordBag(NamedTuple):
    mean: np.ndarray  # [dim] the centred mean of the word vectors, L2-normalised (zeros: no content word)
    words: np.ndarray  # [k, dim] each content word's centred vector, L2-normalised, in sorted word order


def similarity(a: WordBag, b: WordBag) -> float:
    """How well ``b`` says what ``a`` says, in [-1, 1]: the mean of (1) the cosine of the two bags' means (what
    the texts are about as a whole: a caption that drifts to another subject loses it) and (2) how well ``b``
    covers ``a``'s words (each word of ``a``'s best cosine with a word of ``b``, averaged: a synonym counts).
    Either term alone tells seeds from shuffled seeds less well on real captions (bench/README.md)."""
    if not len(a.words) or not len(b.words):
        return 0.0
    coverage = float((a.words @ b.words.T).max(axis=1).mean())
    return 0.5 * (float(a.mean @ b.mean) + coverage)


class WordBagEncoder:
    """``bags(texts)`` -> one `WordBag` per text; ``encode_text(texts)`` -> [N, dim] their means (encoder API)."""

    def __init__(self, encoder: Any) -> None:
        self.encoder = encoder
        self.dim = int(encoder.dim)
        self._vectors: dict[str, np.ndarray] = {}
        self._center: np.ndarray | None = None
        self.encoded_words = 0  # words that needed an encoder call (the rest came from the cache)

    def center(self) -> np.ndarray:
        if self._center is None:
            common = encode_stable(self.encoder, list(_COMMON_WORDS), _WORD_CHUNK, _WORD_BUCKETS)
            self._center = np.asarray(common, np.float32).mean(0)
        return self._center

    def _ensure(self, wanted: set[str]) -> None:
        new = sorted(w for w in wanted if w not in self._vectors)
        if not new:
            return
        if len(self._vectors) + len(new) > _MAX_CACHED:
            self._vectors.clear()
            new = sorted(wanted)
        center = self.center()
        vectors = np.asarray(encode_stable(self.encoder, new, _WORD_CHUNK, _WORD_BUCKETS), np.float32) - center
        self._vectors.update(zip(new, vectors, strict=True))
        self.encoded_words += len(new)

    def bags(self, texts: Sequence[str]) -> list[WordBag]:
        found = [content_words(t) for t in texts]
        self._ensure({w for ws in found for w in ws})
        out = []
        for ws in found:
            if not ws:
                out.append(WordBag(np.zeros(self.dim, np.float32), np.zeros((0, self.dim), np.float32)))
                continue
            vectors = np.stack([self._vectors[w] for w in ws])
            mean = unit_rows(np.sum(vectors, axis=0, dtype=np.float32) / len(ws))
            out.append(WordBag(mean, unit_rows(vectors)))
        return out

    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:  # noqa: ARG002 - encoder API
        bags = self.bags(texts)
        return np.stack([b.mean for b in bags]) if bags else np.zeros((0, self.dim), np.float32)
