"""The conversation contract: what every written row must satisfy for a LLaVA/Bunny trainer.

Checked on every row of every config before it is published (the build) and before it is
exported (`unicorn export`). A violation is a bug, never data: the caller stops with the row id
and the rule instead of writing the row.

Rules (stable names):
- `image_placeholder_count`: exactly one `<image>` in the whole conversation;
- `image_placeholder_position`: it opens the first human turn;
- `turn_order`: turns alternate human/gpt, starting with human and ending with gpt;
- `empty_turn`: no turn is empty (the first human turn has text besides the placeholder);
- `reserved_token`: no other reserved token (chat-template tokens, `<video>`, ...) in any turn;
- `mc_answer`: in an `mc` row each gpt turn is a bare option letter listed in its question, on an
  option line `A. text` or `A: text` (`instruct.option_format`);
- `option_format`: the option lines of one question use one of those formats, not both;
- `embedding_length` / `embedding_not_finite`: the embedding has the config's length, no NaN/Inf;
- `empty_caption`: a caption row (one without `conversations`) has a caption (and `reserved_token` applies to it).

Which rules apply follows the row's shape, not its config's name: a row with `conversations` is a
conversation row, any other row is a caption row; so a new stage's config is checked like the others.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from unicorn_datasets.recipe import OPTION_FORMATS
from unicorn_datasets.text.reserved import DEFAULT, ReservedTokens
from unicorn_datasets.text.tokens import IMAGE_TOKEN

RULES = (
    "image_placeholder_count",
    "image_placeholder_position",
    "turn_order",
    "empty_turn",
    "reserved_token",
    "mc_answer",
    "option_format",
    "embedding_length",
    "embedding_not_finite",
    "empty_caption",
)
# an option line: "A. text" / "A: text" (the letter, then the separator of one of the option formats)
OPTION_LINE = re.compile(r"^([A-Z])([" + re.escape("".join(f[1:] for f in OPTION_FORMATS)) + r"]) \S", re.MULTILINE)


@dataclass(frozen=True)
class Violation:
    row_id: str
    rule: str
    detail: str = ""

    def __str__(self) -> str:
        detail = f": {self.detail}" if self.detail else ""
        return f"row {self.row_id!r} breaks the conversation contract ({self.rule}{detail})"


class ContractViolation(RuntimeError):
    """A row that must not be written; names the row id and the rule."""

    def __init__(self, config: str, violation: Violation) -> None:
        self.config, self.violation = config, violation
        super().__init__(f"{config}: {violation}. This is a bug: nothing was published for this config")


def check_row(config: str, row: dict[str, Any], dim: int | None = None,
              reserved: ReservedTokens = DEFAULT) -> list[Violation]:
    """Every rule `row` breaks (empty list: the row may be written). `config` names the row's config in messages."""
    rid = str(row.get("id"))
    out: list[Violation] = []
    if "conversations" not in row:
        caption = row.get("caption") or ""
        if not caption.strip():
            out.append(Violation(rid, "empty_caption"))
        if found := reserved.find(caption):
            out.append(Violation(rid, "reserved_token", ", ".join(found)))
    else:
        out += _check_turns(rid, list(row.get("conversations") or []), row.get("task"), reserved)
    if row.get("embedding") is not None:
        out += _check_embedding(rid, np.asarray(row["embedding"], dtype=np.float64), dim)
    return out


def _check_turns(rid: str, turns: list[dict[str, Any]], task: str | None, reserved: ReservedTokens) -> list[Violation]:
    out: list[Violation] = []
    roles = [t.get("from") for t in turns]
    expected = ["human", "gpt"] * (len(turns) // 2)
    if not turns or len(turns) % 2 or roles != expected:
        out.append(Violation(rid, "turn_order", f"got {roles}"))
    values = [str(t.get("value") or "") for t in turns]
    n_images = sum(v.count(IMAGE_TOKEN) for v in values)
    if n_images != 1:
        out.append(Violation(rid, "image_placeholder_count", f"{n_images} placeholders"))
    if turns and (roles[0] != "human" or not values[0].startswith(IMAGE_TOKEN)):
        out.append(Violation(rid, "image_placeholder_position", "the first human turn must start with it"))
    for i, v in enumerate(values):
        text = v.removeprefix(IMAGE_TOKEN) if i == 0 else v
        if not text.strip():
            out.append(Violation(rid, "empty_turn", f"turn {i}"))
        others = [t for t in reserved.find(text) if t != IMAGE_TOKEN]
        if others:
            out.append(Violation(rid, "reserved_token", f"turn {i}: {', '.join(others)}"))
    if task == "mc":
        for i in range(1, len(values), 2):
            found = OPTION_LINE.findall(values[i - 1])
            letters = [letter for letter, _ in found]
            if values[i] not in letters:
                out.append(Violation(rid, "mc_answer", f"turn {i}: {values[i][:20]!r} not among options {letters}"))
            if len({sep for _, sep in found}) > 1:
                out.append(Violation(rid, "option_format", f"turn {i - 1}: option lines mix formats"))
    return out


def _check_embedding(rid: str, emb: np.ndarray, dim: int | None) -> list[Violation]:
    out = []
    if emb.ndim != 1 or (dim is not None and emb.shape[0] != dim):
        out.append(Violation(rid, "embedding_length", f"shape {emb.shape}, config length {dim}"))
    if not np.isfinite(emb).all():
        out.append(Violation(rid, "embedding_not_finite", f"{int((~np.isfinite(emb)).sum())} NaN/Inf value(s)"))
    return out


def assert_rows(config: str, rows: Iterable[dict[str, Any]], dim: int | None = None) -> None:
    """Raise ContractViolation on the first row that breaks a rule."""
    for row in rows:
        violations = check_row(config, row, dim)
        if violations:
            raise ContractViolation(config, violations[0])


def assert_table(config: str, table: pa.Table, dim: int | None = None) -> pa.Table:
    """assert_rows over an Arrow table (the embedding column checked as one matrix); returns the table."""
    columns = [c for c in ("id", "task", "caption", "conversations") if c in table.column_names]
    rows: Sequence[dict[str, Any]] = table.select(columns).to_pylist()
    if "embedding" in table.column_names and table.num_rows:
        emb = table.column("embedding").combine_chunks()
        if not _embeddings_ok(emb, table.num_rows, dim):
            for row, vec in zip(rows, emb.to_pylist(), strict=True):  # slow path only to name the row
                assert_rows(config, [{**row, "embedding": vec}], dim)
    assert_rows(config, rows, dim)
    return table


def _embeddings_ok(emb: pa.Array, n: int, dim: int | None) -> bool:
    """All `n` embeddings have one length (`dim` when given) and only finite values: one vectorised check."""
    if emb.null_count:
        return False
    if pa.types.is_fixed_size_list(emb.type):
        width = emb.type.list_size
    else:
        lengths = np.asarray(emb.value_lengths())
        width = int(lengths[0])
        if (lengths != width).any():
            return False
    if dim is not None and width != dim:
        return False
    values = emb.flatten().to_numpy(zero_copy_only=False)
    return values.size == n * width and bool(np.isfinite(values).all())
