"""Text embeddings that do not depend on which other texts share the encoder call.

A transformer batch pads every text to the longest one, and the matrix kernels chosen depend on the
batch's shape: the same text encoded next to different texts differs in the last bits, enough to
flip a threshold check now and then. Checks batched across a build's window (generation/checks.py)
see a different mix of texts on every run, so they encode through `encode_stable`: every call the
encoder sees has one fixed shape, (CHUNK texts, a bucket length), and a text's row depends only on
the text (measured bitwise equal across mixes and positions with MiniLM on CPU).

`run_batched` runs many per-row check functions that call `encoder.encode_text`, and answers the
texts they ask for together: each function runs until it asks for texts not yet encoded, every
missing text of the round is encoded at once, and the functions run again. The check code stays
plain per-row code; the encoder is called once per round, not once per row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

__all__ = ["CHUNK", "StableEncoder", "encode_stable", "run_batched"]

CHUNK = 16  # texts per encoder call, always (the last chunk is filled with copies of the filler)
# Padded lengths: steps of 32 tokens up to 512 (a caption of 170 tokens pads to 192, not 256), then doubling.
_BUCKETS = (16, *range(32, 513, 32), 1024, 2048, 4096, 8192)
T = TypeVar("T")


def _fillers(encoder: Any) -> dict[int, str]:
    cache = getattr(encoder, "_stable_fillers", None)
    if cache is None:
        cache = {}
        try:
            encoder._stable_fillers = cache
        except AttributeError:  # a slotted encoder: find fillers again on each call
            pass
    return cache


def _filler(encoder: Any, length: int) -> str | None:
    """A text of exactly `length` tokens ("a a a ..."), which pads every text of its chunk to `length`;
    None when the tokenizer gives no such text (then texts are grouped by exact length instead)."""
    cache = _fillers(encoder)
    if length not in cache:
        found = None
        n = max(1, length - 2)
        for k in range(n, n + 8):
            text = " ".join(["a"] * k)
            got = int(encoder._token_lengths([text])[0])
            if got == length or (got > length and length >= encoder.max_length):
                found = text
                break
            if got > length:
                break
        cache[length] = found
    return cache[length]


def encode_stable(encoder: Any, texts: Sequence[str], chunk: int = CHUNK,
                  buckets: Sequence[int] = _BUCKETS) -> np.ndarray:
    """encoder.encode_text(texts), each row independent of the other texts of the call (for one `chunk` and
    `buckets`: a caller that changes them gets other bits, so each caller keeps its own)."""
    texts = list(texts)
    dim = int(getattr(encoder, "dim", 0))
    if not texts:
        return np.zeros((0, dim), np.float32)
    if not hasattr(encoder, "_token_lengths"):  # not a transformer encoder: one text per call is exact
        return np.stack([np.asarray(encoder.encode_text([t]), np.float32)[0] for t in texts])
    limit = int(encoder.max_length)
    lengths = [min(int(n), limit) for n in encoder._token_lengths(texts)]
    groups: dict[tuple[int, bool], list[int]] = {}
    for i, n in enumerate(lengths):
        bucket = min(next((b for b in buckets if b >= n), limit), limit)
        filler = _filler(encoder, bucket)
        key = (bucket, True) if filler is not None else (n, False)
        groups.setdefault(key, []).append(i)
    out = np.empty((len(texts), encoder.dim), np.float32)
    for (length, padded), idx in sorted(groups.items()):
        filler = _filler(encoder, length) if padded else None
        for s in range(0, len(idx), chunk - (1 if padded else 0)):
            rows = idx[s : s + chunk - (1 if padded else 0)]
            batch = [texts[i] for i in rows]
            batch += [filler if filler is not None else batch[0]] * (chunk - len(batch))
            out[rows] = np.asarray(encoder.encode_text(batch, batch_size=chunk), np.float32)[: len(rows)]
    return out


class _Missing(Exception):  # noqa: N818 - control flow, never shown: the texts a check asked for are not encoded yet
    pass


class StableEncoder:
    """An encoder-like view that answers from embeddings already made by `encode_stable`; a text not
    made yet is recorded and the calling check is stopped (`run_batched` encodes it and runs it again)."""

    def __init__(self, encoder: Any, cache: dict[str, np.ndarray]) -> None:
        self.encoder, self.cache, self.missing = encoder, cache, set[str]()
        self.dim = getattr(encoder, "dim", None)

    def encode_text(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = list(texts)
        missing = [t for t in texts if t not in self.cache]
        if missing:
            self.missing.update(missing)
            raise _Missing
        if not texts:
            return np.zeros((0, int(self.dim or 0)), np.float32)
        return np.stack([self.cache[t] for t in texts])


def run_batched(encoder: Any, checks: Sequence[Callable[[Any], T]],
                cache: dict[str, np.ndarray] | None = None) -> list[T]:
    """[check(encoder) for check in checks], the encoder calls of all checks answered together, round by round."""
    cache = {} if cache is None else cache
    out: list[Any] = [None] * len(checks)
    todo = list(range(len(checks)))
    while todo:
        view, again = StableEncoder(encoder, cache), []
        for i in todo:
            try:
                out[i] = checks[i](view)
            except _Missing:
                again.append(i)
        if not again:
            break
        wanted = sorted(view.missing)
        for t, e in zip(wanted, encode_stable(encoder, wanted), strict=True):
            cache[t] = e
        todo = again
    return out
