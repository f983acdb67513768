"""The recipe's sections: one frozen dataclass per section, a field per key with its one default and range,
checks across keys in `__post_init__`; `Recipe` holds them all and knows its fingerprint."""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from unicorn_datasets.generation.base import PromptMode, SamplingParams
from unicorn_datasets.recipe.validation import RecipeError, at_least, build_section, origin_of, plain
from unicorn_datasets.transfer.methods import METHODS

StageName = Literal["captions", "instruct", "pretrain"]
STAGES: tuple[str, ...] = typing.get_args(StageName)
InstructTask = Literal["mc", "qa", "reasoning"]
INSTRUCT_TASKS: tuple[str, ...] = typing.get_args(InstructTask)
# Stage 2's model-free item checks (stages/instruct/checks.py), each named by the reason it records
ItemCheck = Literal["copied_example", "malformed_question", "off_question_answer", "unsupported_options",
                    "ungrounded_answer", "repeated_answer"]
ITEM_CHECKS: tuple[str, ...] = typing.get_args(ItemCheck)
# an MC option line in the human turn: "A. text" (the paper's figure) or "A: text" (the authors' released data)
OptionFormat = Literal["A.", "A:"]
OPTION_FORMATS: tuple[str, ...] = typing.get_args(OptionFormat)
SeedCosineEmbedding = Literal["sentence", "words"]  # captions.seed_cosine_embedding
SEED_COSINE_EMBEDDINGS: tuple[str, ...] = typing.get_args(SeedCosineEmbedding)
# (min, max) items per task when `instruct.items` leaves a task out; the paper asks 6-8 for mc/qa and leaves
# reasoning open (UNCONFIRMED)
INSTRUCT_ITEMS = {"mc": (6, 8), "qa": (6, 8), "reasoning": (2, 4)}
INSTRUCT_MAX_CHARS = 2000  # `instruct.max_chars` for a task a per-task mapping leaves out

# Fields that do not change a single row: excluded from the fingerprint (a dotted path names a nested key).
_NOT_IN_FINGERPRINT = ("description", "license", "license_name", "license_link", "transfer.allow_worse_prior",
                       "report")


@dataclass(frozen=True)
class SeedSource:
    path: str  # a file, a dataset folder, a Hub id, or builtin:NAME
    kind: Literal["captions", "domains"] = "captions"
    column: str | None = None  # captions: the column holding the seed text
    source: str | None = None  # captions: the `source` value recorded in each row
    min_words: int = field(default=2, metadata=at_least(1))
    max_words: int = field(default=120, metadata=at_least(1))
    templates_per_label: int = field(default=10, metadata=at_least(1))  # domains: captions written per label
    share: float | None = field(default=None, metadata=at_least(0.0))  # fraction of `limit`; None: what is left
    group_column: str | None = None  # captions: keep one caption per value (one per image), drawn by the build seed
    split: str | None = None  # captions, Hub id or dataset folder: the split (default: train, else the first)
    config: str | None = None  # captions, Hub id: the dataset configuration
    revision: str | None = None  # captions, Hub id: branch, tag or commit
    license: str | None = None  # the seed set's licence, shown on the card (builtin sets record their own)

    def __post_init__(self) -> None:
        if self.share is not None and not 0 <= self.share <= 1:
            raise RecipeError(f"must be a fraction of limit in [0, 1], got {self.share}", "share")


@dataclass(frozen=True)
class LLMSection:
    model: str = "gemma3-270m-gguf"  # a local folder, a .gguf file, a Hub id, or gemma3-270m-gguf (offline)
    endpoints: tuple[str, ...] = ()  # OpenAI-compatible/TGI server URLs; set -> the server backend
    prompt_mode: PromptMode = "auto"  # auto: chat when the model has a chat template (servers: chat)
    batch_size: int = field(default=8, metadata=at_least(1))  # in-process backend: rows per forward pass
    batches_per_call: int = field(default=4, metadata=at_least(1))
    # in-process backend: static batches (default: faster here, per-row seeds honoured) or transformers'
    # continuous batching (bench/README.md)
    batching: Literal["static", "continuous"] = "static"
    max_in_flight: int | None = field(default=None, metadata=at_least(1))  # None: the engine picks from the backend
    timeout: float = field(default=300.0, metadata=at_least(0.001))  # server backend: seconds per request
    max_retries: int = field(default=5, metadata=at_least(0))

    def __post_init__(self) -> None:
        from unicorn_datasets.generation.server.endpoints import endpoint_problem

        for i, raw in enumerate(self.endpoints):
            why = endpoint_problem(raw) if raw.strip() else None
            if why is not None:
                raise RecipeError(f"{raw.strip()!r} is not a server URL ({why}); give http(s)://HOST[:PORT]",
                                  f"endpoints[{i}]")


@dataclass(frozen=True)
class CaptionsSection:
    min_words: int = field(default=51, metadata=at_least(1))
    max_words: int = field(default=483, metadata=at_least(1))
    min_seed_overlap: float = field(default=0.0, metadata=at_least(0.0))  # share of seed content words to mention
    min_seed_cosine: float = field(default=0.0, metadata=at_least(0.0))  # seed-caption cosine (transfer.encoder)
    # how the off-seed check embeds: "sentence" = seed and caption whole; "words" = the mean of their content words'
    # embeddings, each word encoded once (~0.1 ms a caption on CPU, not ~27 ms; encoders/word_bag.py)
    seed_cosine_embedding: SeedCosineEmbedding = "sentence"
    # judgement, mood, narrator/viewer, rhetoric, sound/smell, backstory or commentary phrases a caption may hold
    # (text/objectivity.py), else `subjective`; None = no check
    max_subjective: int | None = field(default=None, metadata=at_least(0))
    keep_truncated: bool = False  # keep a caption cut by max_new_tokens (trimmed, flagged) instead of rejecting
    max_attempts: int = field(default=3, metadata=at_least(1))
    sampling: SamplingParams = SamplingParams(max_new_tokens=768)


@dataclass(frozen=True)
class InstructSection:
    # captions per task: ints are absolute counts, floats fractions of the Stage-1 captions
    mix: dict[InstructTask, int | float] = field(default_factory=lambda: {"mc": 1 / 3, "qa": 1 / 3, "reasoning": 1 / 3})
    items: dict[InstructTask, tuple[int, int]] = field(default_factory=dict)  # (min, max) per task; unset: built-in
    # schema maxLength per question/option/answer: one number, or per task ({reasoning: 600}; others 2000)
    max_chars: int | dict[InstructTask, int] = INSTRUCT_MAX_CHARS
    max_attempts: int = field(default=3, metadata=at_least(1))
    max_verbatim_fraction: float = 0.6
    max_option_similarity: float = 0.92  # MC options this similar (embedding cosine) drop their item
    # a question this close (word Jaccard) to one of the few-shot example's, asking about words the caption
    # never uses ("the boat" for a heron in a field), drops its item; 0 = off
    max_example_overlap: float = field(default=0.6, metadata=at_least(0.0))
    # MC answer support: the marked option must beat every other option's caption support by this margin
    # (cosine units); None = off. Setting it loads `transfer.encoder` in Stage 2.
    min_answer_support_margin: float | None = None
    topup_budget: int = field(default=0, metadata=at_least(0))  # extra captions for a requested task left empty
    # which model-free item checks drop items (bench/README.md: precision and recall); [] = none
    item_checks: tuple[ItemCheck, ...] = ITEM_CHECKS  # type: ignore[assignment]
    option_format: OptionFormat = "A."  # MC option lines; see OptionFormat
    min_verbatim_words: int = field(default=5, metadata=at_least(1))
    constrained: bool = True  # send the JSON schema with each request
    truncate_extra_items: bool = True  # more than max items -> keep the first max (else reject)
    sampling: SamplingParams = SamplingParams(max_new_tokens=1024, temperature=0.7, top_p=0.95)

    def __post_init__(self) -> None:
        for key, tasks in (("items", self.items), ("max_chars", self.max_chars if isinstance(self.max_chars, dict)
                                                   else {})):
            if unknown := sorted(set(tasks) - set(INSTRUCT_TASKS)):
                raise RecipeError(f"unknown task(s) {unknown}; expected {', '.join(INSTRUCT_TASKS)}", key)
        for task, (lo, hi) in self.items.items():
            if not 1 <= lo <= hi:
                raise RecipeError(f"must be [min, max] with 1 <= min <= max, got [{lo}, {hi}]", f"items.{task}")
        for task, share in self.mix.items():
            if share < 0:
                raise RecipeError(f"must be a count or a fraction >= 0, got {share}", f"mix.{task}")
        if not 0.0 < self.max_verbatim_fraction <= 1.0:
            raise RecipeError(f"must be in (0, 1], got {self.max_verbatim_fraction}", "max_verbatim_fraction")

    def bounds(self, task: str) -> tuple[int, int]:
        """(min, max) items for `task`."""
        return tuple(self.items.get(task, INSTRUCT_ITEMS[task]))  # type: ignore[return-value]

    def item_bounds(self) -> dict[str, tuple[int, int]]:
        return {task: self.bounds(task) for task in INSTRUCT_ITEMS}

    def chars(self, task: str) -> int:
        """The schema's maxLength for `task`'s strings."""
        if isinstance(self.max_chars, dict):
            return int(self.max_chars.get(task, INSTRUCT_MAX_CHARS))  # type: ignore[call-overload]
        return int(self.max_chars)

    @property
    def needs_encoder(self) -> bool:
        return self.min_answer_support_margin is not None


@dataclass(frozen=True)
class TransferSection:
    encoder: str = "minilm"
    method: str = field(default="mean-shift", metadata={"choices": METHODS})
    renormalize: bool = False  # released code: no; paper v2: yes
    noise_sigma: float = field(default=0.0, metadata=at_least(0.0))
    embedding_dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = field(default=64, metadata=at_least(1))  # encoder batch
    shard_size: int | None = field(default=None, metadata=at_least(1))  # rows per Stage-3 shard; None: shard_size
    prior: str | None = None  # method "prior": a folder made by `unicorn prior train`
    prior_sha256: str | None = None  # set by the build from the prior's weights (so a retrained prior is refused)
    allow_worse_prior: bool = False  # use a prior that lost to the mean shift on its validation pairs

    def __post_init__(self) -> None:
        if self.method == "prior" and not self.prior:
            raise RecipeError("method prior needs transfer.prior (--prior PRIOR_DIR, a `unicorn prior train` folder)",
                              "method")


@dataclass(frozen=True)
class BalanceSection:  # concept-balanced seed selection (balance.py)
    enabled: bool = False  # with a binding limit: draw round-robin across semantic clusters, not uniformly
    encoder: str | None = None  # None: transfer.encoder; "hashed": hashed TF-IDF (no model)
    k: int | None = field(default=None, metadata=at_least(1))  # clusters; None: round(sqrt(n/2)) in [2, 100]
    batch_size: int = field(default=256, metadata=at_least(1))  # encoder batch


@dataclass(frozen=True)
class ReportSection:  # the diversity report (analysis/report.py): fixed settings, so builds compare
    k: int = field(default=32, metadata=at_least(2))  # k-means clusters of the caption text embeddings
    encoder: str | None = None  # None: balance.encoder, else transfer.encoder; "hashed": hashed TF-IDF


@dataclass(frozen=True)
class NearDupSection:  # near-duplicate captions after Stage 1 (near_dup.py)
    enabled: bool = False
    method: Literal["minhash"] = "minhash"  # bench/README.md: why not embedding cosine
    threshold: float = field(default=0.5, metadata=at_least(0.01))  # MinHash Jaccard of word shingles (<= 1)
    num_perm: int = field(default=128, metadata=at_least(8))
    shingle: int = field(default=3, metadata=at_least(1))  # words per shingle

    def __post_init__(self) -> None:
        if self.threshold > 1.0:
            raise RecipeError(f"must be at most 1 (a Jaccard similarity), got {self.threshold}", "threshold")


@dataclass(frozen=True)
class Recipe:
    name: str = ""  # default: the file's stem
    description: str = ""
    # the card's license: outputs of a model carry that model's terms (the demo's Gemma outputs: `gemma`);
    # `other` with license_name / license_link for terms the Hub has no id for
    license: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    seed: int = 0  # build seed (sampling, selection, shuffles)
    limit: int | None = field(default=None, metadata=at_least(1))  # number of seeds; None: all
    shard_size: int = field(default=64, metadata=at_least(1))  # rows per shard: the unit of resume and of work
    stages: tuple[StageName, ...] = ("captions",)
    seeds: tuple[SeedSource, ...] = ()
    llm: LLMSection = field(default_factory=LLMSection)
    captions: CaptionsSection = field(default_factory=CaptionsSection)
    instruct: InstructSection = field(default_factory=InstructSection)
    transfer: TransferSection = field(default_factory=TransferSection)
    balance: BalanceSection = field(default_factory=BalanceSection)
    near_dup: NearDupSection = field(default_factory=NearDupSection)
    report: ReportSection = field(default_factory=ReportSection)

    def __post_init__(self) -> None:
        shares = [s.share for s in self.seeds if s.share is not None]
        if sum(shares) > 1 + 1e-9:
            terms = " + ".join(f"{x:g}" for x in shares)
            raise RecipeError(f"the seed sources' shares sum to {sum(shares):g} ({terms}); "
                              "they are fractions of limit and may add up to 1 at most", "seeds")
        if "instruct" in self.stages and not any(share > 0 for share in self.instruct.mix.values()):
            raise RecipeError(f"needs a task with a share > 0 when the instruct stage runs, got {self.instruct.mix}; "
                              "give one (e.g. --set instruct.mix.qa=0.5) or leave instruct out of stages",
                              "instruct.mix")

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe", origins: Mapping[str, str] | None = None) -> Recipe:
        """Validate and default a plain mapping. `origins` maps a key path to the flag or `--set` that set it."""
        try:
            return build_section(cls, data, "", None)
        except RecipeError as e:
            raise RecipeError(f"{origin_of(e.path, source, origins or {})}: {e}", e.path) from None

    def to_dict(self) -> dict[str, Any]:
        """Every key with its value (defaults filled), JSON-ready: for the manifest and the build state."""
        return plain(self)

    def fingerprint(self) -> str:
        body = self.to_dict()
        for key in _NOT_IN_FINGERPRINT:
            *parents, leaf = key.split(".")
            node = body
            for p in parents:
                node = node.get(p) or {}
            node.pop(leaf, None)
        body["seeds"] = [{k: v for k, v in s.items() if k != "license"} for s in body["seeds"]]  # a seed set's licence
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(recipe: Recipe) -> str:
    return recipe.fingerprint()
