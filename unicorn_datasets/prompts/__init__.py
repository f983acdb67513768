"""Prompt templates as data files; the one loader and the one template hash of every stage."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

HERE = Path(__file__).parent


@cache
def load(name: str) -> str:
    return (HERE / name).read_text(encoding="utf-8")


def template_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def provenance(names: list[str]) -> dict[str, str]:
    """{file name: template_hash} of the templates a stage uses, for the manifest and the card."""
    return {name: template_hash(load(name)) for name in names}
