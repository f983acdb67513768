"""A recipe = seeds + stages + models + counts: a YAML file loaded, validated and defaulted ONCE into a frozen `Recipe`.

Every key a build reads is a field of a dataclass below, with its one default; adding a key is one
line. Unknown keys, misspelt sections, wrong types and out-of-range values are `RecipeError`s that
name the key's path (`captions.min_words`), the nearest valid key and where the value came from
(the file, a flag, a `--set`). Packaged recipes live in `builders/` (shipped in the wheel as
`unicorn_datasets.builders`); a `.yaml` path loads a user's own file.

The recipe's fingerprint (everything that decides the rows) is stored in the build's work area:
a rerun with a different fingerprint into the same OUT is refused unless --overwrite. It is
computed from the defaulted recipe, so spelling a default out does not change it.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from unicorn_datasets.generation.base import PromptMode, SamplingParams
from unicorn_datasets.packaged import shipped
from unicorn_datasets.transfer.methods import METHODS

StageName = Literal["captions", "instruct", "pretrain"]
STAGES: tuple[str, ...] = typing.get_args(StageName)
InstructTask = Literal["mc", "qa", "reasoning"]
INSTRUCT_TASKS: tuple[str, ...] = typing.get_args(InstructTask)
# Stage 2's model-free item checks (stages/instruct/checks.py), each named by the reason it records
ItemCheck = Literal["copied_example", "malformed_question", "off_question_answer", "unsupported_options"]
ITEM_CHECKS: tuple[str, ...] = typing.get_args(ItemCheck)
# an MC option line in the human turn: "A. text" (the paper's figure) or "A: text" (the authors' released data)
OptionFormat = Literal["A.", "A:"]
OPTION_FORMATS: tuple[str, ...] = typing.get_args(OptionFormat)
# (min, max) items per task when `instruct.items` leaves a task out; the paper asks 6-8 for mc/qa and leaves
# reasoning open (UNCONFIRMED)
INSTRUCT_ITEMS = {"mc": (6, 8), "qa": (6, 8), "reasoning": (2, 4)}
INSTRUCT_MAX_CHARS = 2000  # `instruct.max_chars` for a task a per-task mapping leaves out

# Fields that do not change a single row: excluded from the fingerprint.
_NOT_IN_FINGERPRINT = ("description", "license", "license_name", "license_link")


class RecipeError(ValueError):
    """A recipe that cannot be built as written; the message names the key, its origin and a fix."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


def _min(low: float) -> dict[str, Any]:
    """Field metadata: the smallest value allowed."""
    return {"min": low}


# ---- sections: one dataclass per recipe section; a field per key, with its one default ----------
@dataclass(frozen=True)
class SeedSource:
    path: str  # a file, a dataset folder, a Hub id, or builtin:NAME
    kind: Literal["captions", "domains"] = "captions"
    column: str | None = None  # captions: the column holding the seed text
    source: str | None = None  # captions: the `source` value recorded in each row
    min_words: int = field(default=2, metadata=_min(1))
    max_words: int = field(default=120, metadata=_min(1))
    templates_per_label: int = field(default=10, metadata=_min(1))  # domains: captions written per label
    share: float | None = field(default=None, metadata=_min(0.0))  # fraction of `limit`; None: what is left
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
    batch_size: int = field(default=8, metadata=_min(1))  # in-process backend: rows per forward pass
    batches_per_call: int = field(default=4, metadata=_min(1))
    # in-process backend: static batches (default: faster here, per-row seeds honoured) or transformers'
    # continuous batching (bench/README.md)
    batching: Literal["static", "continuous"] = "static"
    max_in_flight: int | None = field(default=None, metadata=_min(1))  # None: the engine picks from the backend
    timeout: float = field(default=300.0, metadata=_min(0.001))  # server backend: seconds per request
    max_retries: int = field(default=5, metadata=_min(0))


@dataclass(frozen=True)
class CaptionsSection:
    min_words: int = field(default=51, metadata=_min(1))
    max_words: int = field(default=483, metadata=_min(1))
    min_seed_overlap: float = field(default=0.0, metadata=_min(0.0))  # share of seed content words to mention
    min_seed_cosine: float = field(default=0.0, metadata=_min(0.0))  # seed-caption cosine (transfer.encoder); 0: off
    keep_truncated: bool = False  # keep a caption cut by max_new_tokens (trimmed, flagged) instead of rejecting
    max_attempts: int = field(default=3, metadata=_min(1))
    sampling: SamplingParams = SamplingParams(max_new_tokens=768)


@dataclass(frozen=True)
class InstructSection:
    # captions per task: ints are absolute counts, floats fractions of the Stage-1 captions
    mix: dict[InstructTask, int | float] = field(default_factory=lambda: {"mc": 1 / 3, "qa": 1 / 3, "reasoning": 1 / 3})
    items: dict[InstructTask, tuple[int, int]] = field(default_factory=dict)  # (min, max) per task; unset: built-in
    # schema maxLength per question/option/answer: one number, or per task ({reasoning: 600}; others 2000)
    max_chars: int | dict[InstructTask, int] = INSTRUCT_MAX_CHARS
    max_attempts: int = field(default=3, metadata=_min(1))
    max_verbatim_fraction: float = 0.6
    max_option_similarity: float = 0.92  # MC options this similar (embedding cosine) drop their item
    # a question this close (word Jaccard) to one of the few-shot example's, asking about words the caption
    # never uses ("the boat" for a heron in a field), drops its item; 0 = off
    max_example_overlap: float = field(default=0.6, metadata=_min(0.0))
    # MC answer support: the marked option must beat every other option's caption support by this margin
    # (cosine units); None = off. Setting it loads `transfer.encoder` in Stage 2.
    min_answer_support_margin: float | None = None
    topup_budget: int = field(default=0, metadata=_min(0))  # extra captions for a requested task left empty
    # which model-free item checks drop items (bench/README.md: precision and recall); [] = none
    item_checks: tuple[ItemCheck, ...] = ITEM_CHECKS  # type: ignore[assignment]
    option_format: OptionFormat = "A."  # MC option lines; see OptionFormat
    min_verbatim_words: int = field(default=5, metadata=_min(1))
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
    noise_sigma: float = field(default=0.0, metadata=_min(0.0))
    embedding_dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = field(default=64, metadata=_min(1))  # encoder batch
    shard_size: int | None = field(default=None, metadata=_min(1))  # rows per Stage-3 shard; None: shard_size
    prior: str | None = None  # method "prior": a folder made by `unicorn prior train`
    prior_sha256: str | None = None  # set by the build from the prior's weights (so a retrained prior is refused)

    def __post_init__(self) -> None:
        if self.method == "prior" and not self.prior:
            raise RecipeError("method prior needs transfer.prior (--prior PRIOR_DIR, a `unicorn prior train` folder)",
                              "method")


@dataclass(frozen=True)
class BalanceSection:  # concept-balanced seed selection (balance.py)
    enabled: bool = False  # with a binding limit: draw round-robin across semantic clusters, not uniformly
    encoder: str | None = None  # None: transfer.encoder; "hashed": hashed TF-IDF (no model)
    k: int | None = field(default=None, metadata=_min(1))  # clusters; None: round(sqrt(n/2)) in [2, 100]
    batch_size: int = field(default=256, metadata=_min(1))  # encoder batch


@dataclass(frozen=True)
class NearDupSection:  # near-duplicate captions after Stage 1 (near_dup.py)
    enabled: bool = False
    method: Literal["minhash"] = "minhash"  # bench/README.md: why not embedding cosine
    threshold: float = field(default=0.5, metadata=_min(0.01))  # MinHash Jaccard of word shingles (<= 1)
    num_perm: int = field(default=128, metadata=_min(8))
    shingle: int = field(default=3, metadata=_min(1))  # words per shingle

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
    limit: int | None = field(default=None, metadata=_min(1))  # number of seeds; None: all
    shard_size: int = field(default=64, metadata=_min(1))  # rows per shard: the unit of resume and of work
    stages: tuple[StageName, ...] = ("captions",)
    seeds: tuple[SeedSource, ...] = ()
    llm: LLMSection = field(default_factory=LLMSection)
    captions: CaptionsSection = field(default_factory=CaptionsSection)
    instruct: InstructSection = field(default_factory=InstructSection)
    transfer: TransferSection = field(default_factory=TransferSection)
    balance: BalanceSection = field(default_factory=BalanceSection)
    near_dup: NearDupSection = field(default_factory=NearDupSection)

    def __post_init__(self) -> None:
        shares = [s.share for s in self.seeds if s.share is not None]
        if sum(shares) > 1 + 1e-9:
            terms = " + ".join(f"{x:g}" for x in shares)
            raise RecipeError(f"the seed sources' shares sum to {sum(shares):g} ({terms}); "
                              "they are fractions of limit and may add up to 1 at most", "seeds")

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "recipe", origins: Mapping[str, str] | None = None) -> Recipe:
        """Validate and default a plain mapping. `origins` maps a key path to the flag or `--set` that set it."""
        try:
            return _build(cls, data, "", None)
        except RecipeError as e:
            raise RecipeError(f"{_origin(e.path, source, origins or {})}: {e}", e.path) from None

    def to_dict(self) -> dict[str, Any]:
        """Every key with its value (defaults filled), JSON-ready: for the manifest and the build state."""
        return _plain(self)

    def fingerprint(self) -> str:
        body = {k: v for k, v in self.to_dict().items() if k not in _NOT_IN_FINGERPRINT}
        body["seeds"] = [{k: v for k, v in s.items() if k != "license"} for s in body["seeds"]]  # a seed set's licence
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(recipe: Recipe) -> str:
    return recipe.fingerprint()


# ---- finding and loading ---------------------------------------------------------------------
def _builders() -> Any:
    return shipped("builders")


def available() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in _builders().iterdir() if p.name.endswith(".yaml"))


def read_recipe(name_or_path: str) -> tuple[dict[str, Any], str]:
    """The raw mapping of a packaged recipe NAME or a user's .yaml path, and where it came from."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:  # a user's file; a bare NAME is a packaged recipe
        if not p.is_file():
            raise RecipeError(f"recipe file {p} not found")
        text, where, stem = p.read_text(encoding="utf-8"), str(p), p.stem
    else:
        res = _builders() / f"{name_or_path}.yaml"
        if not res.is_file():
            raise RecipeError(f"unknown recipe '{name_or_path}' (available: {', '.join(available())}, or a .yaml path)")
        text, where, stem = res.read_text(encoding="utf-8"), f"builders/{name_or_path}.yaml", name_or_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a YAML mapping")
    data.setdefault("name", stem)
    return data, where


def load_recipe(
    name_or_path: str, overrides: Mapping[str, Any] | None = None, origins: Mapping[str, str] | None = None
) -> Recipe:
    """Read, apply `overrides` ({"a.b": value}, e.g. from flags and `--set`), validate and default: the one load."""
    data, where = read_recipe(name_or_path)
    origins = dict(origins or {})
    for key, value in (overrides or {}).items():
        check_key(key, origins.get(key, f"override {key}"))
        set_field(data, key, value)
    return Recipe.from_dict(data, source=where, origins=origins)


def set_field(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in the nested mapping, creating mappings on the way."""
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value


def check_key(dotted: str, origin: str) -> None:
    """Refuse a key path the recipe does not have, naming the nearest one."""
    cls: Any = Recipe
    done: list[str] = []
    for part in dotted.split("."):
        if cls is None:  # inside a free mapping (instruct.mix.*): any key
            return
        if not dataclasses.is_dataclass(cls):
            raise RecipeError(f"{origin}: '{'.'.join(done)}' has no sub-keys", dotted)
        hints = _hints(cls)
        if part not in hints:
            raise RecipeError(f"{origin}: {_unknown(part, hints, '.'.join(done))}", dotted)
        done.append(part)
        cls = _section_type(hints[part])


def parse_set(item: str) -> tuple[str, Any]:
    """One `--set a.b=VALUE`; the value parses as YAML (numbers, booleans, lists, mappings)."""
    if "=" not in item:
        raise RecipeError(f"--set expects KEY=VALUE, got '{item}'")
    k, v = item.split("=", 1)
    try:
        return k.strip(), yaml.safe_load(v)
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {item}: the value is not valid YAML ({e})") from e


# ---- validation --------------------------------------------------------------------------------
def _hints(cls: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_type(hint: Any) -> Any:
    """The dataclass a key leads into (None for a free mapping, the hint itself otherwise)."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) is dict:
        return None
    return hint


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _unknown(key: str, known: Mapping[str, Any], parent: str) -> str:
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f"did you mean '{_join(parent, near[0])}'?" if near else f"known: {', '.join(known)}"
    where = f"in '{parent}'" if parent else "at the top level"
    return f"unknown key '{_join(parent, key)}' {where} ({hint})"


def _origin(path: str, source: str, origins: Mapping[str, str]) -> str:
    """The flag or --set that set `path` (or a parent of it), else the file."""
    probe = path
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe[: max(probe.rfind("."), probe.rfind("["), 0)]
    return source


def _build(cls: Any, data: Any, path: str, base: Any) -> Any:
    """An instance of dataclass `cls` from a mapping; missing keys come from `base` (or the class defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RecipeError(f"'{path or 'recipe'}' must be a mapping of keys, got {_show(data)}", path)
    hints = _hints(cls)
    for key in data:
        if key not in hints:
            raise RecipeError(_unknown(str(key), hints, path), _join(path, str(key)))
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        p = _join(path, f.name)
        if f.name in data:
            kwargs[f.name] = _check(f, _coerce(data[f.name], hints[f.name], p, _default(f, base)), p)
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"'{p}' is required", p)
    try:
        return cls(**kwargs)
    except RecipeError as e:  # a __post_init__ check: e.path is relative to this section
        raise RecipeError(f"'{_join(path, e.path)}' {e}", _join(path, e.path)) from None
    except (TypeError, ValueError) as e:
        raise RecipeError(f"'{path or 'recipe'}': {e}", path) from None


def _default(f: dataclasses.Field, base: Any) -> Any:
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]


def _check(f: dataclasses.Field, value: Any, path: str) -> Any:
    low, choices = f.metadata.get("min"), f.metadata.get("choices")
    if low is not None and value is not None and value < low:
        raise RecipeError(f"'{path}' must be >= {low}, got {value}", path)
    if choices is not None and value not in choices:
        raise _not_one_of(path, choices, value)
    return value


def _not_one_of(path: str, choices: tuple[Any, ...], value: Any) -> RecipeError:
    near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return RecipeError(f"'{path}' must be one of {', '.join(map(str, choices))}, got {_show(value)}{hint}", path)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _coerce(value: Any, hint: Any, path: str, default: Any = None) -> Any:
    """`value` checked against type `hint` (YAML already gave numbers and booleans their types)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        # a partial mapping fills in from this field's own default (e.g. captions.sampling)
        return _build(hint, value, path, default if dataclasses.is_dataclass(default) else None)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for member in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, member, path)
            except RecipeError:
                continue
        names = " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)
        raise RecipeError(f"'{path}' must be {names}, got {_show(value)}", path)
    if origin is Literal:
        if value in args:
            return value
        raise _not_one_of(path, args, value)
    if origin is tuple:
        if isinstance(value, str) and args and args[-1] is Ellipsis:
            value = [v.strip() for v in value.split(",") if v.strip()]  # "a,b" for a list of names
        if not isinstance(value, list | tuple):
            raise RecipeError(f"'{path}' must be a list, got {_show(value)}", path)
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], _join(path, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"'{path}' must be a list of {len(args)} values, got {_show(value)}", path)
        return tuple(_coerce(v, a, _join(path, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"'{path}' must be a mapping, got {_show(value)}", path)
        if typing.get_origin(args[0]) is Literal and (bad := [k for k in value if k not in typing.get_args(args[0])]):
            raise RecipeError(_unknown(str(bad[0]), dict.fromkeys(typing.get_args(args[0])), path),
                              _join(path, str(bad[0])))
        return {str(k): _coerce(v, args[1], _join(path, str(k))) for k, v in value.items()}
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"recipe field {path}: unsupported type {hint}")  # a bug in the dataclasses above
    if not ok:
        raise RecipeError(f"'{path}' must be {'a number' if hint is float else hint.__name__}, got {_show(value)}",
                          path)
    return value


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj
