"""Stage 2 as a stage: accepted captions, each given a task, -> multi-turn conversations or rejections.

One LLM call per caption asks for JSON only: ``{"QA Pairs": [...]}``, whose items are
``{"Question", "Options": {"A", "B", "C", "D"}, "Answer"}`` for ``mc`` and ``{"Question", "Answer"}``
for ``qa`` and ``reasoning``. The generation engine retries an invalid row with a new per-attempt
seed and, after ``max_attempts``, records it as a rejection (``reject_reason``). ``raw_output``
always stores a whole JSON text (prefill + continuation), so validation never needs the prompt mode.

Round 0 gives each selected caption its task (the recipe's mix). A requested task that ends with no
accepted row gets unused captions in top-up rounds (`topup_budget`); each round's shards are
numbered after the previous rounds', so a resumed build skips them.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unicorn_datasets.dataset.markdown import markdown_table
from unicorn_datasets.encoders.stable import run_batched
from unicorn_datasets.generation.base import GenerationRequest, GenerationResult, PromptMode, resolve_prompt_mode
from unicorn_datasets.generation.checks import Candidate, Verdict
from unicorn_datasets.generation.engine import RowOutcome, WorkUnit
from unicorn_datasets.pipeline.context import log
from unicorn_datasets.pipeline.shards import Shards, run_generation
from unicorn_datasets.randomness import row_seed
from unicorn_datasets.stages.assembly import Tally, accepted, constant, embedding_matrix, fixed_list
from unicorn_datasets.stages.base import CONVERSATION, OUTCOME_FIELDS, StageSpec, outcome_columns, register
from unicorn_datasets.stages.captions import accepted_captions
from unicorn_datasets.stages.instruct.conversations import to_conversations
from unicorn_datasets.stages.instruct.prompting import build_prompt, fewshot, prefill, prompt_provenance
from unicorn_datasets.stages.instruct.schema import json_schema
from unicorn_datasets.stages.instruct.selection import select_tasks, topup_inputs
from unicorn_datasets.stages.instruct.support import TextEncoder
from unicorn_datasets.stages.instruct.validation import validate
from unicorn_datasets.text.reserved import DEFAULT, ReservedTokens

if TYPE_CHECKING:
    from unicorn_datasets.dataset.repo import BuildRepo
    from unicorn_datasets.pipeline.context import Context
    from unicorn_datasets.recipe import InstructSection, Recipe

NAME = "instruct"  # the stage, its work-area folder and its config
Row = dict[str, Any]  # needs "id", "caption", "task"


@dataclass(frozen=True)
class InstructRows:
    """The per-row pair a generation engine calls: ``build_request(row, attempt)`` and
    ``validate(row, result) -> (conversations | None, reason, repairs)``."""

    cfg: InstructSection
    seed: int  # the build seed
    supports_chat: bool  # the backend has a chat template
    encoder: TextEncoder | None = None  # the embedding checks (None = off)
    reserved: ReservedTokens = DEFAULT  # tokens no conversation may carry
    prompt_mode: PromptMode = "auto"  # `llm.prompt_mode`; "auto": chat when the backend supports it

    @property
    def mode(self) -> str:
        return resolve_prompt_mode(self.prompt_mode, self.supports_chat)

    @property
    def prefill(self) -> str:
        return prefill(self.cfg, self.mode)

    def build_request(self, row: Row, attempt: int) -> GenerationRequest:
        mode = self.mode
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
        """The whole validation, embedding checks (if on) included, in the caller's thread."""
        return self._validate(row, result.text, self.encoder)

    def _validate(self, row: Row, text: str, encoder: TextEncoder | None) -> Verdict:
        shown = self.mode == "completion"  # the few-shot example is in the prompt: only then can it be copied
        v = validate(row["task"], self.prefill + text, row["caption"], self.cfg, encoder, self.reserved,
                     example_in_prompt=shown)
        convs = to_conversations(row["task"], v.items, self.cfg.option_format) if v.items is not None else None
        return convs, v.reason, v.repairs

    def check(self, cands: list[Candidate]) -> list[Verdict]:
        """The engine's batched check (embedding checks on): each candidate's value is (row, model text);
        the encoder calls of the whole batch are answered together (encoders/stable.py)."""
        return run_batched(self.encoder, [functools.partial(self._validate, *c.value) for c in cands])


class InstructStage:
    name = NAME

    def __init__(self, cfg: InstructSection, *, prompt_mode: str = "auto", build_seed: int, model_id: str) -> None:
        self.cfg, self.mix, self.build_seed, self.model_id = cfg, dict(cfg.mix), build_seed, model_id
        self.prompt_mode = prompt_mode  # as the recipe says (provenance); the backend resolves "auto" in run
        self.selected = 0
        self.rows: InstructRows | None = None
        self._check: Any = None  # rows.check, kept as one object

    def provenance(self) -> dict[str, Any]:
        c = self.cfg
        return {"prompt_sha": prompt_provenance(), "item_bounds": c.item_bounds(), "prompt_mode": self.prompt_mode,
                "constrained": c.constrained, "max_attempts": c.max_attempts, "sampling": c.sampling.as_dict(),
                "max_verbatim_fraction": c.max_verbatim_fraction, "max_chars": c.max_chars,
                "min_answer_support_margin": c.min_answer_support_margin, "topup_budget": c.topup_budget,
                "item_checks": list(c.item_checks), "option_format": c.option_format, "mix": self.mix}

    def prompt_sha(self) -> str:
        return json.dumps(prompt_provenance(), sort_keys=True)

    def prepare(self, ctx: Context) -> None:
        """What `work_unit` needs of the build (prompt mode, tokens, encoder): set by `run`, and by `unicorn plan`."""
        self.ctx, self.chat = ctx, ctx.prompt_mode() == "chat"

    def run(self, ctx: Context) -> None:
        self.prepare(ctx)
        caps = accepted_captions(ctx.repo)
        chosen = select_tasks(caps["id"], self.mix, self.build_seed)

        def round_inputs(picked: dict[str, str]) -> datasets.Dataset:
            ds = caps.select([i for i, rid in enumerate(caps["id"]) if rid in picked])
            return ds.add_column("task", [picked[r] for r in ds["id"]])

        requested = [t for t, v in self.mix.items() if v]
        rounds = [round_inputs(chosen)]
        start = 0
        while True:
            shards = Shards.of(rounds[-1], ctx.shard_size, start=start)
            run_generation(ctx, self, shards)
            start = shards.count
            if not self.cfg.topup_budget:  # no top-up: no need to read back what the round delivered
                break
            done = ((r["id"], r["task"], r["reject_reason"] is None)
                    for t in ctx.repo.read_parts(self.name, ["id", "task", "reject_reason"]) for r in t.to_pylist())
            extra = topup_inputs(caps["id"], done, requested, chosen, self.build_seed, self.cfg.topup_budget)
            if not extra:
                break
            log(f"instruct: top-up round {len(rounds)}: {len(extra)} caption(s) for {sorted(set(extra.values()))}",
                ctx.rank)
            rounds.append(round_inputs(extra))
        self.selected = sum(len(r) for r in rounds)

    def _row_ops(self) -> InstructRows:
        if self.rows is None:  # work exists: load the encoder only now, and only if a check needs it
            enc = self.ctx.encoder() if self.cfg.needs_encoder else None
            self.rows = InstructRows(self.cfg, self.build_seed, self.chat, enc, self.ctx.reserved_tokens())
        return self.rows

    def work_unit(self, shard: int, rows: dict[str, list]) -> WorkUnit:
        ops = self._row_ops()
        items = [{"id": str(i), "caption": "" if c is None else str(c), "task": t}
                 for i, c, t in zip(rows["id"], rows["caption"], rows["task"], strict=True)]
        empty = {k: RowOutcome(reason="empty_caption") for k, r in enumerate(items) if not r["caption"].strip()}
        if ops.encoder is None:
            return WorkUnit(shard, [r["id"] for r in items], lambda k, attempt: ops.build_request(items[k], attempt),
                            lambda k, res: ops.validate(items[k], res), self.cfg.sampling, self.cfg.max_attempts,
                            decided=empty)
        # Embedding checks on: the whole validation runs in the engine's check worker, off the event loop
        # (the cheap checks cannot run first: an item the embeddings drop changes what the rest decide).
        if self._check is None or self._check.__self__ is not ops:
            self._check = ops.check  # one object for every unit: the worker batches by check
        return WorkUnit(shard, [r["id"] for r in items], lambda k, attempt: ops.build_request(items[k], attempt),
                        lambda k, res: ((items[k], res.text), None, []), self.cfg.sampling, self.cfg.max_attempts,
                        decided=empty, check=self._check)

    def part_table(self, rows: dict[str, list], outcomes: list[RowOutcome]) -> pa.Table:
        pre = self._row_ops().prefill
        cols = {**{k: rows[k] for k in ("id", "caption", "task")},
                "conversations": [o.value for o in outcomes],
                "raw_output": [pre + o.raw if o.attempts else None for o in outcomes],
                "repairs": [o.notes if o.value is not None else [] for o in outcomes],
                **outcome_columns(outcomes)}
        return pa.Table.from_pydict(cols, schema=PART_SCHEMA)

    def assemble(self, repo: BuildRepo) -> dict[str, Any]:
        summary = assemble_instruct(repo, self.model_id, self.prompt_sha(), selected=self.selected)
        empty = [t for t, v in self.mix.items() if v and not summary["tasks"].get(t)]
        if empty:
            summary["warnings"] = [f"requested task(s) {empty} have no accepted row (top-up budget "
                                   f"{self.cfg.topup_budget} caption(s) spent or no unused caption left)"]
            log(f"WARNING instruct: {summary['warnings'][0]}")
        return summary


PART_SCHEMA = pa.schema([("id", pa.string()), ("caption", pa.string()), ("task", pa.string()),
                         ("conversations", CONVERSATION), ("raw_output", pa.string()),
                         ("repairs", pa.list_(pa.string())), *OUTCOME_FIELDS])
INSTRUCT_COLUMNS = [
    ("id", pa.string()),
    ("task", pa.string()),
    ("conversations", CONVERSATION),
    ("model", pa.string()),
    ("prompt_sha", pa.string()),
    ("attempts", pa.int32()),
    ("repairs", pa.list_(pa.string())),
]


def assemble_instruct(
    repo: BuildRepo, model: str, prompt_sha: str, *, selected: int, embeddings_from: str | None = None
) -> dict[str, Any]:
    """The instruct config from the Stage-2 parts (accepted rows); with `embeddings_from` (the stage whose parts
    hold `id`, `embedding`), each row gets its caption's embedding joined by id."""
    columns = list(INSTRUCT_COLUMNS)
    lookup: dict[str, np.ndarray] = {}
    emb_type: pa.DataType | None = None
    if embeddings_from:
        wanted = set()
        for t in repo.read_parts(NAME, ["id", "reject_reason"]):
            wanted.update(t.filter(pc.is_null(t.column("reject_reason"))).column("id").to_pylist())
        for t in repo.read_parts(embeddings_from, ["id", "embedding"]):
            keep = t.filter(pc.is_in(t.column("id"), pa.array(sorted(wanted), pa.string())))
            emb = embedding_matrix(keep.column("embedding"))
            lookup.update(zip(keep.column("id").to_pylist(), emb))
            emb_type = emb_type or pa.list_(pa.from_numpy_dtype(emb.dtype), emb.shape[1]) if emb.size else emb_type
        if emb_type is not None:
            columns.insert(3, ("embedding", emb_type))
    schema = pa.schema(columns)

    tally = Tally()
    tasks: Counter[str] = Counter()  # delivered rows per task

    def tables():
        for t in repo.read_parts(NAME):
            tally.add(t)
            tasks.update(t.filter(pc.is_null(t.column("reject_reason"))).column("task").to_pylist())
            a = accepted(t, "conversations")
            a = constant(constant(a, "model", model), "prompt_sha", prompt_sha)
            if emb_type is not None:
                mat = (
                    np.stack([lookup[i] for i in a.column("id").to_pylist()])
                    if a.num_rows
                    else np.zeros((0, emb_type.list_size))
                )
                a = a.append_column("embedding", fixed_list(mat, emb_type))
            yield a.select(schema.names)

    files = repo.write_config(NAME, tables(), schema)
    return {"selected": selected, **tally.summary(), "tasks": dict(tasks), "files": files}


def _make(recipe: Recipe, seeds: list[Any], shard_size: int) -> InstructStage:
    return InstructStage(recipe.instruct, prompt_mode=recipe.llm.prompt_mode, build_seed=recipe.seed,
                         model_id=recipe.llm.model)


def _card_text(recipe: dict[str, Any], stages: dict[str, Any]) -> str:
    i = recipe.get(NAME, {})
    checks = ", ".join(f"`{c}`" for c in i.get("item_checks", ())) or "none"
    return (f"2. **Instructions**: task mix {stages[NAME].get('tasks')}, JSON-schema constrained output, "
            f"validated (option letters, item counts, verbatim copying; item checks: {checks}) and retried. "
            f"Multiple-choice options are written `{i.get('option_format', 'A.')} text`, one per line.")


def task_mix_table(recipe: dict[str, Any], stages: dict[str, Any]) -> str:
    """Requested (recipe `instruct.mix`) beside delivered (accepted instruct rows) per task."""
    if NAME not in stages:
        return "No instruction data in this build."
    mix = recipe.get(NAME, {}).get("mix") or {}
    delivered = stages[NAME].get("tasks", {})
    total = sum(delivered.values()) or 1
    rows = []
    for task in sorted(set(mix) | set(delivered)):
        want = mix.get(task, 0)
        asked = f"{want:.0%} of captions" if isinstance(want, float) and want < 1 else str(want)
        got = delivered.get(task, 0)
        rows.append((task, asked, got, f"{got / total:.1%}"))
    return markdown_table(rows, ("task", "requested", "delivered rows", "delivered share"))


SPEC = register(StageSpec(
    name=NAME, make=_make, enabled=lambda recipe: NAME in recipe.stages, config=NAME, part_schema=PART_SCHEMA,
    reject_input="caption",
    about="Stage 2: multi-turn instruction data (`task` = mc / qa / reasoning), `embedding` joined by `id`.",
    card_text=_card_text, card_sections={"task_mix_table": task_mix_table},
))
