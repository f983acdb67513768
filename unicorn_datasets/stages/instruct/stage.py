"""Stage 2 for one row and for a batch: request building and validation around the shared retry loop.

One LLM call per caption asks for JSON only: ``{"QA Pairs": [...]}``, whose items are
``{"Question", "Options": {"A", "B", "C", "D"}, "Answer"}`` for ``mc`` and ``{"Question", "Answer"}``
for ``qa`` and ``reasoning``. Invalid rows are retried with a new per-attempt seed and, after
``max_attempts``, kept as a recorded rejection (``reject_reason``). ``raw_output`` always stores a
whole JSON text (prefill + continuation), so validation never needs to know the prompt mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...generation.base import Backend, GenerationRequest, GenerationResult
from ...seeding import row_seed
from ..retry import RowOutcome, generate_with_retries
from .config import TASKS, InstructConfig
from .conversations import to_conversations
from .prompting import build_prompt, fewshot, prefill, resolve_mode
from .schema import json_schema
from .support import TextEncoder
from .validation import validate

Row = dict[str, Any]  # needs "id", "caption", "task"


@dataclass(frozen=True)
class InstructRows:
    """The per-row pair a generation engine calls: ``build_request(row, attempt)`` and
    ``validate(row, result) -> (conversations | None, reason, repairs)``."""

    cfg: InstructConfig
    seed: int  # the build seed
    supports_chat: bool  # the backend has a chat template
    encoder: TextEncoder | None = None  # the embedding checks (None = off)

    @property
    def prefill(self) -> str:
        return prefill(self.cfg, resolve_mode(self.cfg, self.supports_chat))

    def build_request(self, row: Row, attempt: int) -> GenerationRequest:
        mode = resolve_mode(self.cfg, self.supports_chat)
        rid, task = str(row["id"]), row["task"]
        prompt = build_prompt(row["caption"], task, self.cfg, mode)
        schema = json_schema(task, self.cfg) if self.cfg.constrained else None
        rseed = row_seed(self.seed, rid, attempt, stream="instruct")
        if mode == "chat":
            return GenerationRequest(
                key=rid, seed=rseed, messages=[{"role": "user", "content": prompt}], json_schema=schema
            )
        stop = tuple(fewshot().get("stop", ()))
        return GenerationRequest(key=rid, seed=rseed, prompt=prompt, json_schema=schema, stop=stop)

    def validate(self, row: Row, result: GenerationResult) -> tuple[Any, str | None, list[str]]:
        v = validate(row["task"], self.prefill + result.text, row["caption"], self.cfg, self.encoder)
        return (to_conversations(row["task"], v.items) if v.items is not None else None), v.reason, v.repairs


def _rows(batch: dict[str, list]) -> list[Row]:
    for col in ("id", "caption", "task"):
        if col not in batch:
            raise ValueError(f"instruction stage: input column {col!r} is missing (have: {sorted(batch)})")
    rows = [
        {"id": str(i), "caption": "" if c is None else str(c), "task": t}
        for i, c, t in zip(batch["id"], batch["caption"], batch["task"], strict=True)
    ]
    for r in rows:
        if r["task"] not in TASKS:
            raise ValueError(f"row {r['id']}: column 'task' = {r['task']!r}; expected one of {', '.join(TASKS)}")
    return rows


def generate_instructions(
    batch: dict[str, list],
    *,
    backend: Backend,
    cfg: InstructConfig,
    seed: int,
    encoder: TextEncoder | None = None,
) -> dict[str, list]:
    """``Dataset.map(batched=True)`` function: id, caption, task -> conversations or a reject reason.

    All still-pending rows go to the backend together, one ``generate`` call per attempt round.
    """
    rows = _rows(batch)
    ops = InstructRows(cfg, seed, backend.supports_chat, encoder)
    asked = [r for r in rows if r["caption"].strip()]  # empty captions: recorded, never sent
    outcomes = generate_with_retries(
        len(asked),
        lambda k, attempt: ops.build_request(asked[k], attempt),
        lambda k, res: ops.validate(asked[k], res),
        backend,
        cfg.sampling,
        cfg.max_attempts,
    )
    by_id = {r["id"]: o for r, o in zip(asked, outcomes, strict=True)}
    empty = RowOutcome(reason="empty_caption")
    done = [by_id.get(r["id"], empty) for r in rows]
    out = dict(batch)
    out.update(
        conversations=[o.value for o in done],
        reject_reason=[o.reason if o.value is None else None for o in done],
        raw_output=[ops.prefill + o.raw if o.attempts else None for o in done],
        attempts=[o.attempts for o in done],
        n_tokens=[o.n_tokens for o in done],
        repairs=[o.notes if o.value is not None else [] for o in done],
    )
    return out
