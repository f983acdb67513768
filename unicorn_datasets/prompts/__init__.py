"""Prompt templates as data files; `load(name)` returns the text and a short hash for provenance."""

from __future__ import annotations

import hashlib
from pathlib import Path

HERE = Path(__file__).parent


def load(name: str) -> str:
    return (HERE / name).read_text(encoding="utf-8")


def template_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]
