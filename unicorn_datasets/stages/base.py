"""What a stage is: the build is a loop over the registered stages, each owning its config, inputs, per-row work,
output schema, assembly, rejections, card text and provenance.

A stage module declares a `StageSpec` (`register(...)`): its name, whether the recipe asks for it, how it
is made from the recipe, its output config, part schema, the part column its rejections record as input,
and its card and summary text. `unicorn_datasets.stages` imports the built-in stage modules in build
order; the loop, the manifest, the card, the rejections table and the summary read `registered()`.

A stage's `run` does this rank's share of the work (sharded, resumable: parts in `.build/<name>/`);
after every rank has finished, rank 0 calls `assemble` to turn the parts into the final config and
a summary (rows in/out, rejections by reason) for the manifest and card. LLM stages describe one
row's work to the generation engine (`work_unit`) and how a shard's outcomes become a part
(`part_table`); the engine runs the rows (the server client adds its own retries and concurrency limit).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import datasets
import pyarrow as pa

from unicorn_datasets.generation.engine import RowOutcome, WorkUnit
from unicorn_datasets.pipeline.shards import Shards, run_generation

if TYPE_CHECKING:
    from unicorn_datasets.dataset.repo import BuildRepo
    from unicorn_datasets.pipeline.context import Context
    from unicorn_datasets.recipe import Recipe


class Stage(Protocol):
    name: str  # its parts' folder and its completion marker in the work area

    def provenance(self) -> dict[str, Any]: ...

    def run(self, ctx: Context) -> None: ...

    def assemble(self, repo: BuildRepo) -> dict[str, Any]: ...


Summary = dict[str, Any]  # a stage's assembly summary, as kept in the manifest's `stages`


@dataclass(frozen=True)
class StageSpec:
    """Everything the build, the manifest, the card, the rejections table and the summary need to know of a stage."""

    name: str  # its parts' folder, completion marker and run statistics in the work area
    make: Callable[[Recipe, list[Any], int], Stage]  # (recipe, seeds, shard size) -> the stage
    enabled: Callable[[Recipe], bool]  # whether the recipe asks for it
    config: str | None = None  # the output config folder it publishes (None: none of its own)
    part_schema: pa.Schema | None = None  # the schema of its shard parts
    reject_input: str | None = None  # the part column a rejected row records as `input` in rejections.parquet
    about: str = ""  # one line for the card's configs table
    card_text: Callable[[dict[str, Any], dict[str, Summary]], str] | None = None  # (recipe, stages) -> prose
    card_sections: Mapping[str, Callable[[dict[str, Any], dict[str, Summary]], str]] = field(default_factory=dict)
    steps: tuple[str, ...] | None = None  # its rows in the summary table (work-area steps); None: (name,)
    summary_lines: Callable[[Summary], list[str]] | None = None  # extra summary lines from its assembly summary

    @property
    def summary_steps(self) -> tuple[str, ...]:
        return (self.name,) if self.steps is None else self.steps


_REGISTRY: dict[str, StageSpec] = {}


def register(spec: StageSpec) -> StageSpec:
    """Add a stage after the ones registered before it (registration order is build order)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"a stage named {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def registered_specs() -> tuple[StageSpec, ...]:
    """The stages registered so far; `unicorn_datasets.stages.registered()` adds the built-ins first."""
    return tuple(_REGISTRY.values())


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


CONVERSATION = pa.list_(pa.struct([("from", pa.string()), ("value", pa.string())]))  # LLaVA-style turns
OUTCOME_FIELDS = [
    ("reject_reason", pa.string()),
    ("attempt_reasons", pa.list_(pa.string())),
    ("server_error", pa.string()),
    ("attempts", pa.int32()),
    ("n_tokens", pa.int64()),
    ("gen_seed", pa.uint64()),
]
