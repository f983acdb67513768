"""Per-row seeds: stable across runs, processes, shards and batch sizes.

Derived with sha256 (Python's hash() is salted per process). `stream` keeps the draws of
different consumers apart: the captions and instructions of one id must not share a stream.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def row_seed(build_seed: int, row_id: str, attempt: int = 0, *, stream: str = "") -> int:
    """A 63-bit seed for (build seed, stream, row id, attempt)."""
    digest = hashlib.sha256(f"{build_seed}\x1f{stream}\x1f{row_id}\x1f{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def row_seeds(ids: Sequence[str], build_seed: int, *, stream: str = "") -> list[int]:
    return [row_seed(build_seed, str(i), stream=stream) for i in ids]
