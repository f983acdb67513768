"""Stage 1: expand each seed into one dense, objective caption paragraph.

Two prompt modes: `chat` (instruction-tuned models: the paper's requirements with the seed
appended) and `completion` (base models: a few-shot prefix ending in "Description:", stopped at
a blank line). Outputs that are empty, out of the word bounds, cut off or degenerate are retried
and finally recorded as rejections with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from unicorn_datasets import prompts
from unicorn_datasets.dataset.layout import REJECTIONS, artifact
from unicorn_datasets.errors import BuildError
from unicorn_datasets.generation.base import GenerationRequest, GenerationResult, SamplingParams
from unicorn_datasets.generation.engine import RowOutcome, WorkUnit
from unicorn_datasets.randomness import row_seed
from unicorn_datasets.recipe import CaptionsSection
from unicorn_datasets.seeds.sources import Seed
from unicorn_datasets.stages.base import OUTCOME_FIELDS, GenerationStage, outcome_columns
from unicorn_datasets.stages.seed_check import SeedCosine
from unicorn_datasets.text.reserved import DEFAULT, ReservedTokens
from unicorn_datasets.text.tokens import complete_sentences

if TYPE_CHECKING:
    from unicorn_datasets.analysis.near_dup import NearDupConfig
    from unicorn_datasets.dataset.repo import BuildRepo
    from unicorn_datasets.pipeline.context import Context

SEED_COLUMNS = ("id", "seed", "source", "domain", "label")  # what a seed row carries into its caption row
COMPLETION_STOPS = ("\n\n", "\nSeed:", "\nDescription:")
_LEAKS = ("Seed:", "Description:", "Seed caption:", "Requirements:")


@dataclass
class CaptionConfig:
    # defaults: the recipe's (one default per key, in recipe.py)
    min_words: int = CaptionsSection.min_words
    min_seed_overlap: float = CaptionsSection.min_seed_overlap  # share of the seed's content words to mention (0: off)
    min_seed_cosine: float = CaptionsSection.min_seed_cosine  # seed-caption cosine with the text encoder (0: off)
    keep_truncated: bool = CaptionsSection.keep_truncated  # keep captions cut by max_new_tokens, trimmed and flagged
    max_words: int = CaptionsSection.max_words
    max_attempts: int = CaptionsSection.max_attempts
    prompt_mode: str = "chat"  # "chat" | "completion" | "auto" (resolved from the backend when the stage runs)
    sampling: SamplingParams = CaptionsSection.sampling
    chat_template: str = field(default_factory=lambda: prompts.load("caption_chat.txt"))
    fewshot_template: str = field(default_factory=lambda: prompts.load("caption_fewshot.txt"))

    @classmethod
    def from_recipe(cls, section: CaptionsSection, prompt_mode: str) -> CaptionConfig:
        keys = ("min_words", "max_words", "max_attempts", "min_seed_overlap", "min_seed_cosine", "keep_truncated",
                "sampling")
        return cls(prompt_mode=prompt_mode, **{k: getattr(section, k) for k in keys})

    @property
    def template(self) -> str:
        return self.chat_template if self.prompt_mode == "chat" else self.fewshot_template

    def provenance(self) -> dict[str, Any]:
        return {
            "prompt_mode": self.prompt_mode,
            "prompt_sha": prompts.template_hash(self.template),
            "min_words": self.min_words,
            "max_words": self.max_words,
            "max_attempts": self.max_attempts,
            "min_seed_overlap": self.min_seed_overlap,
            "min_seed_cosine": self.min_seed_cosine,
            "keep_truncated": self.keep_truncated,
            "sampling": self.sampling.as_dict(),
        }


def build_request(row_id: str, seed_text: str, cfg: CaptionConfig, build_seed: int, attempt: int) -> GenerationRequest:
    prompt = cfg.template.replace("{seed}", seed_text)
    seed = row_seed(build_seed, row_id, attempt, stream="captions")
    if cfg.prompt_mode == "chat":
        return GenerationRequest(key=row_id, seed=seed, messages=[{"role": "user", "content": prompt}])
    return GenerationRequest(key=row_id, seed=seed, prompt=prompt, stop=COMPLETION_STOPS)


def clean(text: str, finish_reason: str, keep_truncated: bool = True) -> str:
    """One paragraph of prose: whitespace collapsed; a cut-off tail trimmed to the last full sentence
    when it is to be kept (`check` rejects it otherwise)."""
    text = " ".join(text.split())
    if finish_reason == "length" and keep_truncated:
        text = complete_sentences(text)
    return text


def is_degenerate(words: list[str]) -> bool:
    """Repetition loops: few distinct 4-grams, or one word dominating the text."""
    if len(words) < 12:
        return False
    grams = [tuple(w.lower() for w in words[i : i + 4]) for i in range(len(words) - 3)]
    if len(set(grams)) / len(grams) < 0.6:
        return True
    top = max(words.count(w) for w in set(words))
    return top / len(words) > 0.25


# Words that say how a seed was phrased, not what the image shows: they need not reappear.
_SEED_FILLER = frozenset(
    "a an the of in on at with and or to for from by is are was were be this that these those it its my our their "
    "who which what photo photograph photographed image picture close up closeup shot view type kind looks looking "
    "seems someone person candid taken showing shows depicting".split()
)
_WORD = re.compile(r"[a-z]+")


def _stem(word: str) -> str:
    return word[:5]  # crude but language-model-free: "wings"/"winged", "photographed"/"photograph"


def seed_overlap(seed: str, caption: str) -> float:
    """Share of the seed's content words (stemmed) that the caption mentions; 1.0 for a seed without any."""
    content = {_stem(w) for w in _WORD.findall(seed.lower()) if w not in _SEED_FILLER and len(w) > 2}
    if not content:
        return 1.0
    said = {_stem(w) for w in _WORD.findall(caption.lower())}
    return len(content & said) / len(content)


def check(
    text: str,
    cfg: CaptionConfig,
    finish_reason: str,
    seed: str = "",
    seed_cosine: Callable[[str], float] | None = None,
    *,
    reserved: ReservedTokens = DEFAULT,
) -> str | None:
    """The rejection reason, or None when the caption is acceptable.

    `seed_cosine(caption)` (an encoder call) runs last, only for captions every cheap check passed."""
    if not text or (finish_reason == "length" and not cfg.keep_truncated):
        return "truncated" if finish_reason == "length" else "empty"
    if any(leak in text for leak in _LEAKS):
        return "prompt_leak"
    if reserved.find(text):  # an `<image>` or template token would become part of a training conversation
        return "reserved_token"
    words = text.split()
    if is_degenerate(words):
        return "repetition"
    if len(words) < cfg.min_words:
        return "too_short"
    if len(words) > cfg.max_words:
        return "too_long"
    if cfg.min_seed_overlap > 0 and seed_overlap(seed, text) < cfg.min_seed_overlap:
        return "drifted_from_seed"
    if cfg.min_seed_cosine > 0:
        if seed_cosine is None:
            raise ValueError("captions.min_seed_cosine is set but no text encoder was given to the check")
        if seed_cosine(text) < cfg.min_seed_cosine:
            return "off_seed"
    return None


def validate(
    raw: str,
    finish_reason: str,
    cfg: CaptionConfig,
    seed: str = "",
    seed_cosine: Callable[[str], float] | None = None,
    *,
    reserved: ReservedTokens = DEFAULT,
) -> tuple[str | None, str | None, list[str]]:
    """A model answer -> (caption, None, notes) when accepted, else (None, reason, []): `clean`, then `check`."""
    text = clean(raw, finish_reason, cfg.keep_truncated)
    reason = check(text, cfg, finish_reason, seed, seed_cosine, reserved=reserved)
    if reason is not None:
        return None, reason, []
    return text, None, ["truncated"] if finish_reason == "length" else []


class CaptionStage(GenerationStage):
    """Stage 1: seed rows (`id`, `seed`, `source`, `domain`, `label`) -> one caption each, or a recorded rejection."""

    name = "captions"

    def __init__(self, cfg: CaptionConfig, seeds: list[Seed], *, build_seed: int, model_id: str,
                 seed_check_encoder: str = "", near_dup: NearDupConfig | None = None) -> None:
        self.cfg, self.seeds, self.build_seed, self.model_id = cfg, seeds, build_seed, model_id
        self.seed_check_encoder = seed_check_encoder  # the encoder of the off-seed check (transfer.encoder)
        self.near_dup = near_dup
        self.reserved: ReservedTokens | None = None
        self.ctx: Context | None = None

    def provenance(self) -> dict[str, Any]:
        prov = self.cfg.provenance()
        if self.cfg.min_seed_cosine > 0:
            prov["seed_check_encoder"] = self.seed_check_encoder
        if self.near_dup and self.near_dup.enabled:
            prov["near_dup"] = self.near_dup.provenance()
        return prov

    def run(self, ctx: Context) -> None:
        if self.cfg.prompt_mode == "auto":
            self.cfg = replace(self.cfg, prompt_mode=ctx.prompt_mode())
        self.ctx = ctx
        super().run(ctx)
        if self.near_dup and self.near_dup.enabled:  # between the map and rank 0's assembly (near_dup.py)
            from unicorn_datasets.analysis.near_dup import reject_near_duplicates

            reject_near_duplicates(ctx, self.name, self.near_dup)

    def inputs(self, ctx: Context) -> datasets.Dataset:
        s = self.seeds
        return datasets.Dataset.from_dict(
            {"id": [x.id for x in s], "seed": [x.seed for x in s], "source": [x.source for x in s],
             "domain": [x.domain for x in s], "label": [x.label for x in s]},
            features=datasets.Features({k: datasets.Value("string") for k in SEED_COLUMNS}),
        )

    def work_unit(self, shard: int, rows: dict[str, list]) -> WorkUnit:
        ids, seeds, cfg = rows["id"], rows["seed"], self.cfg
        if self.reserved is None:  # work exists, so the model is loaded: its own special tokens count too
            self.reserved = self.ctx.reserved_tokens() if self.ctx is not None else DEFAULT
        cosine = None
        if cfg.min_seed_cosine > 0:  # the off-seed check embeds with the Stage-3 text encoder
            cosine = SeedCosine(self.ctx.encoder(), seeds) if self.ctx is not None else None

        def validate_row(i: int, res: GenerationResult) -> tuple[Any, str | None, list[str]]:
            return validate(res.text, res.finish_reason, cfg, seeds[i],
                            (lambda c: cosine(i, c)) if cosine else None, reserved=self.reserved)

        return WorkUnit(shard, list(ids), lambda i, attempt: build_request(ids[i], seeds[i], cfg, self.build_seed,
                                                                           attempt), validate_row, cfg.sampling,
                        cfg.max_attempts)

    def part_table(self, rows: dict[str, list], outcomes: list[RowOutcome]) -> pa.Table:
        n = len(rows["id"])
        cols = {**{k: rows[k] if k in rows else [None] * n for k in SEED_COLUMNS},  # rows without domain/label
                "caption": [o.value for o in outcomes], "raw_output": [o.raw for o in outcomes],
                "truncated": [o.value is not None and "truncated" in o.notes for o in outcomes],
                **outcome_columns(outcomes)}
        return pa.Table.from_pydict(cols, schema=PART_SCHEMA)

    def assemble(self, repo: BuildRepo) -> dict[str, Any]:
        from unicorn_datasets.pipeline.assemble import assemble_captions

        # the resolved prompt mode is kept so that a rerun that skips this stage reports the same provenance
        return {**assemble_captions(repo, self.model_id, self.cfg.provenance()["prompt_sha"]),
                "prompt_mode": self.cfg.prompt_mode}

    def resumed(self, repo: BuildRepo) -> None:
        if self.cfg.prompt_mode == "auto":
            mode = repo.stage_summary(self.name).get("prompt_mode")
            if mode in ("chat", "completion"):
                self.cfg = replace(self.cfg, prompt_mode=mode)


PART_SCHEMA = pa.schema([("id", pa.string()), ("seed", pa.string()), ("source", pa.string()),
                         ("domain", pa.string()), ("label", pa.string()),  # null for caption seeds
                         ("caption", pa.string()), ("raw_output", pa.string()), ("truncated", pa.bool_()),
                         *OUTCOME_FIELDS])


def accepted_captions(repo: BuildRepo) -> datasets.Dataset:
    """Stage-1 captions (accepted rows only), ordered by id: the input of Stages 2 and 3.

    Raises BuildError when Stage 1 accepted nothing: a later stage has no input."""
    schema = pa.schema([("id", pa.string()), ("caption", pa.string())])
    # cast: parts of older builds typed an all-rejected caption column as null
    tables = [t.cast(schema) for t in repo.read_parts("captions", ["id", "caption"])]
    table = pa.concat_tables([t.filter(pc.is_valid(t.column("caption"))) for t in tables] or [schema.empty_table()])
    if table.num_rows == 0:
        rejected = repo.stage_summary("captions").get("rejected", {})
        raise BuildError(
            f"Stage 1 accepted no caption (rejections: {rejected or 'none'}); nothing for the next stages. "
            f"See {artifact(REJECTIONS)} for the raw outputs, then adjust the recipe (e.g. captions.min_words)."
        )
    return datasets.Dataset(table.sort_by("id"))
