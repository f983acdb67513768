"""Embedding checks on MC items, with the build's sentence encoder (the recipe's ``transfer.encoder``).

- Near-synonym options: two options of one item whose embeddings have cosine >= a threshold.
- Answer support: every option is scored by how well the caption supports it, as the highest cosine
  between "question + option" and any caption sentence (the question is shared by all options, so the
  ranking comes from the option). The marked option must beat the best other option by a margin.
  Measured on hand-made cases in bench/mc_support.py (results in bench/README.md).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from unicorn_datasets.encoders.base import unit_rows
from unicorn_datasets.stages.instruct.config import LETTERS
from unicorn_datasets.text.tokens import SENTENCE_END


class TextEncoder(Protocol):
    def encode_text(self, texts: list[str], batch_size: int = ...) -> np.ndarray: ...


def caption_sentences(caption: str) -> list[str]:
    out, start = [], 0
    for m in SENTENCE_END.finditer(caption):
        out.append(caption[start : m.end()].strip())
        start = m.end()
    out.append(caption[start:].strip())
    return [s for s in out if s]


def option_similarity(items: list[dict[str, Any]], encoder: TextEncoder) -> list[float]:
    """Per MC item, the highest cosine between two of its options."""
    if not items:
        return []
    emb = unit_rows(encoder.encode_text([it["Options"][k] for it in items for k in LETTERS]))
    out = []
    for i in range(len(items)):
        e = emb[i * 4 : (i + 1) * 4]
        sims = e @ e.T
        out.append(float(sims[np.triu_indices(4, k=1)].max()))
    return out


def answer_margins(items: list[dict[str, Any]], caption: str, encoder: TextEncoder) -> list[float]:
    """Per MC item: support of the marked option minus the best support among the other options."""
    if not items:
        return []
    sentences = caption_sentences(caption) or [caption]
    statements = [f'{it["Question"]} {it["Options"][k]}' for it in items for k in LETTERS]
    emb = unit_rows(encoder.encode_text(sentences + statements))
    sent, stat = emb[: len(sentences)], emb[len(sentences) :]
    support = (stat @ sent.T).max(axis=1).reshape(len(items), 4)
    out = []
    for i, it in enumerate(items):
        marked = LETTERS.index(it["Answer"])
        others = np.delete(support[i], marked)
        out.append(float(support[i, marked] - others.max()))
    return out
