"""Stage 1: expand each seed into one dense, objective caption paragraph.

Two prompt modes: `chat` (instruction-tuned models: the paper's requirements with the seed
appended) and `completion` (base models: a few-shot prefix ending in "Description:", stopped at
a blank line). Outputs that are empty, out of the word bounds, cut off or degenerate are retried
and finally recorded as rejections with the reason.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from unicorn_datasets import prompts
from unicorn_datasets.dataset.layout import REJECTIONS, artifact
from unicorn_datasets.errors import BuildError
from unicorn_datasets.generation.base import GenerationRequest, GenerationResult
from unicorn_datasets.generation.engine import RowOutcome, WorkUnit
from unicorn_datasets.randomness import row_seed
from unicorn_datasets.recipe import CaptionsSection, NearDupSection
from unicorn_datasets.seeds.sources import Seed
from unicorn_datasets.stages.assembly import Tally, accepted, constant, with_defaults
from unicorn_datasets.stages.base import OUTCOME_FIELDS, GenerationStage, StageSpec, outcome_columns, register
from unicorn_datasets.stages.seed_check import OFF_SEED, SeedCosineCheck
from unicorn_datasets.text.objectivity import subjective_markers
from unicorn_datasets.text.reserved import DEFAULT, ReservedTokens
from unicorn_datasets.text.tokens import PICTURE_WORDS, complete_sentences, prefix_stem

if TYPE_CHECKING:
    from unicorn_datasets.dataset.repo import BuildRepo
    from unicorn_datasets.pipeline.context import Context
    from unicorn_datasets.recipe import Recipe

NAME = "captions"  # the stage, its work-area folder and its config
SEED_COLUMNS = ("id", "seed", "source", "domain", "label")  # what a seed row carries into its caption row
COMPLETION_STOPS = ("\n\n", "\nSeed:", "\nDescription:")
_LEAKS = ("Seed:", "Description:", "Seed caption:", "Requirements:")


def template(mode: str) -> str:
    """The prompt template of a resolved prompt mode ("chat" or "completion")."""
    return prompts.load("caption_chat.txt" if mode == "chat" else "caption_fewshot.txt")


def caption_provenance(cfg: CaptionsSection, mode: str) -> dict[str, Any]:
    """What the manifest and card say about Stage 1: its recipe section, the prompt mode and the template's hash."""
    return {
        "prompt_mode": mode,
        "prompt_sha": prompts.template_hash(template(mode)),
        "min_words": cfg.min_words,
        "max_words": cfg.max_words,
        "max_attempts": cfg.max_attempts,
        "min_seed_overlap": cfg.min_seed_overlap,
        "min_seed_cosine": cfg.min_seed_cosine,
        "keep_truncated": cfg.keep_truncated,
        "sampling": cfg.sampling.as_dict(),
    }


def build_request(row_id: str, seed_text: str, cfg: CaptionsSection, build_seed: int, attempt: int,
                  mode: str = "chat") -> GenerationRequest:
    prompt = template(mode).replace("{seed}", seed_text)
    seed = row_seed(build_seed, row_id, attempt, stream="captions")
    if mode == "chat":
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
    low = [w.lower() for w in words]  # once, not once per 4-gram: this runs on every response
    n_grams = len(words) - 3
    if len(set(zip(low, low[1:], low[2:], low[3:], strict=False))) / n_grams < 0.6:
        return True
    top = max(Counter(words).values())  # linear, not a count per distinct word
    return top / len(words) > 0.25


# Words that say how a seed was phrased, not what the image shows: they need not reappear.
_SEED_FILLER = frozenset(
    "a an the of in on at with and or to for from by is are was were be this that these those it its my our their "
    "who which what up".split()
) | PICTURE_WORDS
_WORD = re.compile(r"[a-z]+")  # letter runs, not text.tokens.words: "cat's" must still mention "cat"


def seed_overlap(seed: str, caption: str) -> float:
    """Share of the seed's content words (stemmed) that the caption mentions; 1.0 for a seed without any."""
    content = {prefix_stem(w) for w in _WORD.findall(seed.lower()) if w not in _SEED_FILLER and len(w) > 2}
    if not content:
        return 1.0
    said = {prefix_stem(w) for w in _WORD.findall(caption.lower())}
    return len(content & said) / len(content)


def check(
    text: str,
    cfg: CaptionsSection,
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
    if cfg.max_subjective is not None and len(subjective_markers(text, seed)) > cfg.max_subjective:
        return "subjective"
    if cfg.min_seed_cosine > 0:
        if seed_cosine is None:
            raise ValueError("captions.min_seed_cosine is set but no text encoder was given to the check")
        if seed_cosine(text) < cfg.min_seed_cosine:
            return OFF_SEED
    return None


def validate(
    raw: str,
    finish_reason: str,
    cfg: CaptionsSection,
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

    name = NAME

    def __init__(self, cfg: CaptionsSection, seeds: list[Seed], *, prompt_mode: str = "chat", build_seed: int,
                 model_id: str, seed_check_encoder: str = "", near_dup: NearDupSection | None = None) -> None:
        self.cfg, self.seeds, self.build_seed, self.model_id = cfg, seeds, build_seed, model_id
        self.mode = prompt_mode  # "chat" | "completion" | "auto" (resolved from the backend when the stage runs)
        self.seed_check_encoder = seed_check_encoder  # the encoder of the off-seed check (transfer.encoder)
        self.near_dup = near_dup
        self.reserved: ReservedTokens | None = None
        self.ctx: Context | None = None
        self.seed_check: SeedCosineCheck | None = None  # one per stage: the engine batches its candidates

    def provenance(self) -> dict[str, Any]:
        prov = caption_provenance(self.cfg, self.mode)
        if self.cfg.min_seed_cosine > 0:
            prov["seed_check_encoder"] = self.seed_check_encoder
            prov["seed_cosine_embedding"] = self.cfg.seed_cosine_embedding
        if self.near_dup and self.near_dup.enabled:
            from unicorn_datasets.analysis.near_dup import provenance

            prov["near_dup"] = provenance(self.near_dup)
        return prov

    def prepare(self, ctx: Context) -> None:
        """What `work_unit` needs of the build (the resolved prompt mode, the model's tokens, the encoder):
        set by `run`, and by `unicorn plan` before it probes the backend with this stage's requests."""
        if self.mode == "auto":
            self.mode = ctx.prompt_mode()
        self.ctx = ctx

    def run(self, ctx: Context) -> None:
        self.prepare(ctx)
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
        # The off-seed check embeds with the Stage-3 text encoder, in the engine's check worker: the cheap
        # checks run inline, and a caption they accept goes to the worker as (caption, seed).
        if cfg.min_seed_cosine > 0 and self.seed_check is None:
            if self.ctx is None:
                raise ValueError("captions.min_seed_cosine is set but no text encoder was given to the check")
            self.seed_check = SeedCosineCheck(self.ctx.encoder(), cfg.min_seed_cosine, cfg.seed_cosine_embedding)
        check = self.seed_check if cfg.min_seed_cosine > 0 else None
        inline = replace(cfg, min_seed_cosine=0.0)

        def validate_row(i: int, res: GenerationResult) -> tuple[Any, str | None, list[str]]:
            text, reason, notes = validate(res.text, res.finish_reason, inline, seeds[i], reserved=self.reserved)
            return ((text, seeds[i]) if check is not None and reason is None else text), reason, notes

        return WorkUnit(shard, list(ids), lambda i, attempt: build_request(ids[i], seeds[i], cfg, self.build_seed,
                                                                           attempt, self.mode), validate_row,
                        cfg.sampling, cfg.max_attempts, check=check)

    def part_table(self, rows: dict[str, list], outcomes: list[RowOutcome]) -> pa.Table:
        n = len(rows["id"])
        cols = {**{k: rows[k] if k in rows else [None] * n for k in SEED_COLUMNS},  # rows without domain/label
                "caption": [o.value for o in outcomes], "raw_output": [o.raw for o in outcomes],
                "truncated": [o.value is not None and "truncated" in o.notes for o in outcomes],
                **outcome_columns(outcomes)}
        return pa.Table.from_pydict(cols, schema=PART_SCHEMA)

    def assemble(self, repo: BuildRepo) -> dict[str, Any]:
        # the resolved prompt mode is kept so that a rerun that skips this stage reports the same provenance
        return {**assemble_captions(repo, self.model_id, caption_provenance(self.cfg, self.mode)["prompt_sha"]),
                "prompt_mode": self.mode}

    def resumed(self, repo: BuildRepo) -> None:
        if self.mode == "auto":
            mode = repo.stage_summary(self.name).get("prompt_mode")
            if mode in ("chat", "completion"):
                self.mode = mode


PART_SCHEMA = pa.schema([("id", pa.string()), ("seed", pa.string()), ("source", pa.string()),
                         ("domain", pa.string()), ("label", pa.string()),  # null for caption seeds
                         ("caption", pa.string()), ("raw_output", pa.string()), ("truncated", pa.bool_()),
                         *OUTCOME_FIELDS])
CAPTIONS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("seed", pa.string()),
        ("source", pa.string()),
        ("domain", pa.string()),  # domain seeds: the label's domain and the label; null for caption seeds
        ("label", pa.string()),
        ("caption", pa.string()),
        ("model", pa.string()),
        ("prompt_sha", pa.string()),
        ("gen_seed", pa.uint64()),
        ("attempts", pa.int32()),
        ("truncated", pa.bool_()),  # cut by max_new_tokens, kept trimmed (captions.keep_truncated)
        ("attempt_reasons", pa.list_(pa.string())),  # why earlier attempts of this row were rejected
    ]
)


def assemble_captions(repo: BuildRepo, model: str, prompt_sha: str) -> dict[str, Any]:
    """The captions config from the Stage-1 parts (accepted rows), and the stage's summary."""
    tally, truncated = Tally(), 0
    delivered: dict[str, Counter[str]] = {"sources": Counter(), "domains": Counter()}  # the card's delivered mix

    def tables():
        nonlocal truncated
        for t in repo.read_parts(NAME):
            t = with_defaults(tally.add(t))
            truncated += pc.sum(t.column("truncated")).as_py() or 0
            a = constant(constant(accepted(t, "caption"), "model", model), "prompt_sha", prompt_sha)
            delivered["sources"].update(a.column("source").to_pylist())
            delivered["domains"].update(d for d in a.column("domain").to_pylist() if d is not None)
            yield a.select(CAPTIONS_SCHEMA.names)

    files = repo.write_config(NAME, tables(), CAPTIONS_SCHEMA)
    return {**tally.summary(), "files": files, "kept_truncated": int(truncated),
            "delivered": {k: dict(sorted(v.items())) for k, v in delivered.items()}}


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


def _make(recipe: Recipe, seeds: list[Seed], shard_size: int) -> CaptionStage:
    return CaptionStage(recipe.captions, seeds, prompt_mode=recipe.llm.prompt_mode, build_seed=recipe.seed,
                        model_id=recipe.llm.model, seed_check_encoder=recipe.transfer.encoder, near_dup=recipe.near_dup)


def _card_text(recipe: dict[str, Any], stages: dict[str, Any]) -> str:
    c = recipe.get(NAME, {})
    llm = recipe.get("llm", {})
    text = (f"1. **Captions**: each seed expanded by `{llm.get('model')}` into one objective paragraph "
            f"({c.get('min_words')}-{c.get('max_words')} words), {llm.get('prompt_mode')} prompts.")
    checks = []
    if c.get("min_seed_overlap"):
        checks.append(f"mentioning under {c['min_seed_overlap']:g} of the seed's content words (`drifted_from_seed`)")
    if c.get("max_subjective") is not None:
        checks.append(f"more than {c['max_subjective']} phrase(s) of judgement, mood, rhetoric, a narrator, a "
                      "sound or smell, backstory or commentary (`subjective`)")
    if c.get("min_seed_cosine"):
        encoder = recipe.get("transfer", {}).get("encoder")
        if c.get("seed_cosine_embedding") == "words":
            checks.append(f"a similarity with the seed under {c['min_seed_cosine']:g} (`off_seed`; word bags of "
                          f"`{encoder}`, each content word encoded alone)")
        else:
            checks.append(f"a cosine with the seed under {c['min_seed_cosine']:g} (`off_seed`; whole-text "
                          f"embeddings of `{encoder}`)")
    return text + (" Captions rejected for " + " or ".join(checks) + "." if checks else "")


SPEC = register(StageSpec(
    name=NAME, make=_make, enabled=lambda recipe: True, config=NAME, part_schema=PART_SCHEMA, reject_input="seed",
    about="Stage 1: one dense, objective caption per seed (`id`, `seed`, `source`, `caption`).",
    card_text=_card_text,
))
