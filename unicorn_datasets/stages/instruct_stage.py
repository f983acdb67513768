"""Stage 2 as a stage: accepted captions, each given a task, -> multi-turn conversations or rejections."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import datasets
import pyarrow as pa

from ..assemble import CONVERSATION
from ..generation.base import GenerationResult
from ..generation.engine import RowOutcome, WorkUnit
from .base import OUTCOME_FIELDS, GenerationStage, outcome_columns
from .captions import accepted_captions
from .instructions import (
    InstructConfig,
    _prefill,
    build_request,
    prompt_provenance,
    select_tasks,
    to_conversations,
    validate,
)

if TYPE_CHECKING:
    from ..build.context import Context
    from ..repo import BuildRepo


class InstructStage(GenerationStage):
    name = "instruct"

    def __init__(self, cfg: InstructConfig, *, mix: dict[str, int | float], build_seed: int, model_id: str) -> None:
        self.cfg, self.mix, self.build_seed, self.model_id = cfg, mix, build_seed, model_id
        self.selected = 0
        self.chat = cfg.prompt_mode == "chat"

    def provenance(self) -> dict[str, Any]:
        c = self.cfg
        return {"prompt_sha": prompt_provenance(c), "item_bounds": c.item_bounds, "prompt_mode": c.prompt_mode,
                "constrained": c.constrained, "max_attempts": c.max_attempts, "sampling": c.sampling.as_dict(),
                "max_verbatim_fraction": c.max_verbatim_fraction, "mix": self.mix}

    def prompt_sha(self) -> str:
        return json.dumps(self.provenance()["prompt_sha"], sort_keys=True)

    def run(self, ctx: Context) -> None:
        self.chat = ctx.prompt_mode() == "chat"
        super().run(ctx)

    def inputs(self, ctx: Context) -> datasets.Dataset:
        caps = accepted_captions(ctx.repo)
        chosen = select_tasks(caps["id"], self.mix, self.build_seed)
        inputs = caps.select([i for i, rid in enumerate(caps["id"]) if rid in chosen])
        self.selected = len(inputs)
        return inputs.add_column("task", [chosen[r] for r in inputs["id"]])

    def work_unit(self, shard: int, rows: dict[str, list]) -> WorkUnit:
        ids, caps, tasks, cfg = rows["id"], rows["caption"], rows["task"], self.cfg
        prefill = _prefill(cfg, "chat" if self.chat else "completion")

        def validate_one(i: int, res: GenerationResult) -> tuple[Any, str | None, list[str]]:
            v = validate(tasks[i], prefill + res.text, caps[i], cfg)
            return (to_conversations(tasks[i], v.items) if v.items is not None else None), v.reason, v.repairs

        empty = {i: RowOutcome(reason="empty_caption") for i, c in enumerate(caps) if not (c or "").strip()}
        return WorkUnit(
            shard, list(ids),
            lambda i, attempt: build_request(ids[i], caps[i], tasks[i], cfg, self.build_seed, attempt, self.chat),
            validate_one, cfg.sampling, cfg.max_attempts, decided=empty,
        )

    def part_table(self, rows: dict[str, list], outcomes: list[RowOutcome]) -> pa.Table:
        prefill = _prefill(self.cfg, "chat" if self.chat else "completion")
        cols = {**{k: rows[k] for k in ("id", "caption", "task")},
                "conversations": [o.value for o in outcomes],
                "raw_output": [prefill + o.raw if o.attempts else None for o in outcomes],
                "repairs": [o.notes if o.value is not None else [] for o in outcomes],
                **outcome_columns(outcomes)}
        return pa.Table.from_pydict(cols, schema=PART_SCHEMA)

    def assemble(self, repo: BuildRepo) -> dict[str, Any]:
        from ..assemble import assemble_instruct

        return assemble_instruct(repo, self.model_id, self.prompt_sha(), selected=self.selected)


PART_SCHEMA = pa.schema([("id", pa.string()), ("caption", pa.string()), ("task", pa.string()),
                         ("conversations", CONVERSATION), ("raw_output", pa.string()),
                         ("repairs", pa.list_(pa.string())), *OUTCOME_FIELDS])
