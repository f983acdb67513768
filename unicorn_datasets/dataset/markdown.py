"""Markdown pieces of the card that stages write too (a stage's own card section)."""

from __future__ import annotations


def markdown_table(rows: list[tuple[object, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
