"""What a stage is: the build is a loop over the recipe's stages, each owning its config, inputs, per-row work,
output schema, assembly and provenance.

A stage's `run` does this rank's share of the work (sharded, resumable: parts in `.build/<name>/`);
after every rank has finished, rank 0 calls `assemble` to turn the parts into the final config and
a summary (rows in/out, rejections by reason) for the manifest and card. LLM stages describe one
row's work to the generation engine (`work_unit`) and how a shard's outcomes become a part
(`part_table`); the engine owns concurrency, retries and journaling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import datasets
import pyarrow as pa

from unicorn_datasets.generation.engine import RowOutcome, WorkUnit
from unicorn_datasets.pipeline.shards import Shards, run_generation

if TYPE_CHECKING:
    from unicorn_datasets.dataset.repo import BuildRepo
    from unicorn_datasets.pipeline.context import Context


class Stage(Protocol):
    name: str  # its parts' folder and its completion marker in the work area

    def provenance(self) -> dict[str, Any]: ...

    def run(self, ctx: Context) -> None: ...

    def assemble(self, repo: BuildRepo) -> dict[str, Any]: ...


class GenerationStage:
    """Base of the LLM stages: rows from `inputs` go through the engine in shards of the recipe's size."""

    name: str

    def inputs(self, ctx: Context) -> datasets.Dataset:
        raise NotImplementedError

    def work_unit(self, shard: int, rows: dict[str, list]) -> WorkUnit:
        raise NotImplementedError

    def part_table(self, rows: dict[str, list], outcomes: list[RowOutcome]) -> pa.Table:
        raise NotImplementedError

    def run(self, ctx: Context) -> None:
        run_generation(ctx, self, Shards.of(self.inputs(ctx), ctx.shard_size))


def outcome_columns(outcomes: list[RowOutcome]) -> dict[str, list]:
    """The columns every LLM stage's part carries besides its own: why, how often, what the model said."""
    return {
        "reject_reason": [o.reason if o.value is None else None for o in outcomes],
        "attempt_reasons": [list(o.attempt_reasons) for o in outcomes],
        "server_error": [o.error for o in outcomes],
        "attempts": [o.attempts for o in outcomes],
        "n_tokens": [o.n_tokens for o in outcomes],
        "gen_seed": [o.seed for o in outcomes],
    }


OUTCOME_FIELDS = [
    ("reject_reason", pa.string()),
    ("attempt_reasons", pa.list_(pa.string())),
    ("server_error", pa.string()),
    ("attempts", pa.int32()),
    ("n_tokens", pa.int64()),
    ("gen_seed", pa.uint64()),
]
