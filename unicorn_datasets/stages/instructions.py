"""Stage 2: instruction data (multiple choice, question answering, complex reasoning) from captions.

One LLM call per caption asks for JSON only: ``{"QA Pairs": [...]}``, whose items are
``{"Question", "Options": {"A", "B", "C", "D"}, "Answer"}`` for ``mc`` and
``{"Question", "Answer"}`` for ``qa`` and ``reasoning``. Every output is parsed and validated
here even when the backend decodes under the JSON schema; invalid rows are retried with a new
per-attempt seed and, after ``max_attempts``, kept as a recorded rejection (``reject_reason``).

Prompt templates are data files in ``unicorn_datasets/prompts/``:
``instruct_{mc,qa,reasoning}.txt`` (chat mode: one user message) and
``instruct_fewshot_example.json`` (completion mode, for base models: header, one worked example
caption -> JSON, then the caption and ``JSON:``). Placeholders are ``{name}`` for the names a
template uses (``{caption}``, ``{min_items}``, ``{max_items}``; the few-shot layout also has
``{header}``, ``{example_caption}``, ``{example_json}``). They are replaced in ONE pass by name,
so literal JSON braces need no escaping and a caption that itself contains ``{max_items}`` is
never expanded. This is not ``str.format``.

Completion mode and the JSON opening: with ``constrained=True`` (default) the request carries
the JSON schema and the grammar itself forces the opening ``{"QA Pairs": [``; with
``constrained=False`` the prompt ends with that opening (prefill) and no schema is sent, because
a schema describes a whole document and the continuation is not one. ``raw_output`` always
stores a whole JSON text (prefill + continuation), so :func:`validate` and :func:`revalidate`
never need to know the mode.

Conversation format (LLaVA style, ``{"from": "human" | "gpt", "value": str}``), one human/gpt
pair per item, ``"<image>\\n"`` prepended to the first human turn only:

- ``mc``: human = ``"<Question>\\nA. <opt A>\\nB. <opt B>\\nC. <opt C>\\nD. <opt D>"``, gpt = the bare
  letter, e.g. ``"B"``. (The paper's loader writes ``"A: ..."``; we use ``"A. ..."``: see
  ``OPTION_LINE``.)
- ``qa`` / ``reasoning``: human = the question, gpt = the answer.

Verbatim copying (``qa`` answers by default): both texts are lower-cased and split into word
tokens (letters/digits, inner apostrophes kept); ``run`` = the longest run of consecutive caption
words that also appears consecutively in the answer. An answer is a copy when
``run >= min_verbatim_words`` and ``run / len(answer words) > max_verbatim_fraction``. The
minimum run lets short answers ("Blue.", "On the wooden bench") equal a caption phrase.

Rejection reasons are short stable snake_case strings (see ``REJECT_REASONS``); safe repairs are
applied and listed in ``repairs`` instead of rejecting (see ``REPAIRS``).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

from unicorn_datasets.generation.base import (
    Backend,
    GenerationRequest,
    GenerationResult,
    PromptMode,
    SamplingParams,
    resolve_prompt_mode,
)
from unicorn_datasets.recipe import InstructSection, LLMSection
from unicorn_datasets.seeding import row_seed
from unicorn_datasets.stages.retry import RowOutcome, generate_with_retries

TASKS: tuple[str, ...] = ("mc", "qa", "reasoning")
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
OPTION_LINE = "{letter}. {text}"  # one MC option line in the human turn
IMAGE_TOKEN = "<image>"
JSON_OPENING = '{"QA Pairs": ['  # matches json.dumps of the few-shot example, so the prefill looks alike
TOP_KEY = "QA Pairs"

REJECT_REASONS: tuple[str, ...] = (
    "empty_caption",
    "bad_json",
    "truncated_json",
    "duplicate_keys",
    "not_an_object",
    "missing_qa_pairs",
    "qa_pairs_not_a_list",
    "too_few_items",
    "too_many_items",
    "item_not_an_object",
    "missing_question",
    "empty_question",
    "missing_answer",
    "empty_answer",
    "missing_options",
    "extra_options",
    "empty_option",
    "duplicate_options",
    "answer_not_an_option_letter",
    "duplicate_questions",
    "verbatim_copy",
    "answer_cut_off",  # an answer stopped by the schema's maxLength mid-sentence, with no full sentence
)
REPAIRS: tuple[str, ...] = (
    "stripped_preamble",  # text before the first "{" (e.g. "Sure! ```json")
    "ignored_trailing_text",  # text after the JSON object (code fence, next few-shot block)
    "renamed_keys",  # "qa pairs" / "question" / "options" / "a" -> canonical spelling
    "dropped_extra_keys",  # item keys the task does not use
    "coerced_to_string",  # numbers -> strings ("How many ...?": 3)
    "stripped_whitespace",
    "options_list_to_dict",  # ["x", "y", "z", "w"] -> {"A": "x", ...}
    "stripped_option_labels",  # "A. x" / "(A) x" inside an option -> "x"
    "normalized_answer",  # "B." / "B) ..." / "(b)" / "Option B" / option text -> "B"
    "truncated_items",  # more than max items: kept the first max
    "trimmed_cut_off_answer",  # an answer stopped by maxLength mid-sentence: kept its full sentences
)

def _default_bounds() -> dict[str, tuple[int, int]]:
    return {"mc": (6, 8), "qa": (6, 8), "reasoning": (2, 4)}


@dataclass
class InstructConfig:
    # (min, max) items per task; the paper asks 6-8 for mc/qa and leaves reasoning open (UNCONFIRMED)
    item_bounds: dict[str, tuple[int, int]] = field(default_factory=_default_bounds)
    # defaults: the recipe's (one default per key, in recipe.py)
    max_verbatim_fraction: float = InstructSection.max_verbatim_fraction  # see module docstring
    min_verbatim_words: int = InstructSection.min_verbatim_words  # shorter copied runs are never a copy
    verbatim_tasks: tuple[str, ...] = ("qa",)
    max_attempts: int = InstructSection.max_attempts
    prompt_mode: PromptMode = LLMSection.prompt_mode  # auto: chat when the backend supports it, else completion
    constrained: bool = InstructSection.constrained  # send the JSON schema with each request
    truncate_extra_items: bool = InstructSection.truncate_extra_items  # more than max items -> keep the first max
    sampling: SamplingParams = InstructSection.sampling
    prompt_dir: str | None = None  # folder with replacement template files (same names)
    max_chars: int = InstructSection.max_chars  # longest question / option / answer string the schema allows

    def __post_init__(self) -> None:
        bounds = {**_default_bounds(), **{k: tuple(v) for k, v in self.item_bounds.items()}}
        for task, (lo, hi) in bounds.items():
            if task not in TASKS:
                raise ValueError(f"item_bounds: unknown task {task!r}; expected one of {', '.join(TASKS)}")
            if not 1 <= lo <= hi:
                raise ValueError(f"item_bounds[{task!r}] = ({lo}, {hi}): need 1 <= min <= max")
        self.item_bounds = bounds  # type: ignore[assignment]
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.prompt_mode not in ("auto", "chat", "completion"):
            raise ValueError(f"prompt_mode must be auto, chat or completion, got {self.prompt_mode!r}")
        if not 0.0 < self.max_verbatim_fraction <= 1.0:
            raise ValueError(f"max_verbatim_fraction must be in (0, 1], got {self.max_verbatim_fraction}")

    def bounds(self, task: str) -> tuple[int, int]:
        _check_task(task)
        return self.item_bounds[task]


class Validation(NamedTuple):
    """(items, None, repairs) when valid, (None, reason, repairs) when rejected."""

    items: list[dict[str, Any]] | None
    reason: str | None
    repairs: list[str]


def _check_task(task: Any) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


# --------------------------------------------------------------------------- prompts


def _read_prompt_file(name: str, prompt_dir: str | None) -> str:
    if prompt_dir is not None:
        p = Path(prompt_dir) / name
        if p.exists():
            return p.read_text(encoding="utf-8")
    return _packaged_prompt(name)


@cache
def _packaged_prompt(name: str) -> str:
    return resources.files("unicorn_datasets").joinpath("prompts", name).read_text(encoding="utf-8")


def _fewshot(prompt_dir: str | None) -> dict[str, Any]:
    name = "instruct_fewshot_example.json"
    try:
        return json.loads(_read_prompt_file(name, prompt_dir))
    except json.JSONDecodeError as e:
        raise ValueError(f"{name}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def render(template: str, **values: Any) -> str:
    """Replace ``{name}`` for the given names in one pass; other braces are left alone."""
    if not values:
        return template
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in values) + r")\}")
    return pattern.sub(lambda m: str(values[m.group(1)]), template)


def prompt_provenance(cfg: InstructConfig) -> dict[str, str]:
    """sha256 of every template file in use, for the build manifest and the card."""
    names = [f"instruct_{t}.txt" for t in TASKS] + ["instruct_fewshot_example.json"]
    return {n: hashlib.sha256(_read_prompt_file(n, cfg.prompt_dir).encode()).hexdigest() for n in names}


def _resolve_mode(cfg: InstructConfig, supports_chat: bool) -> Literal["chat", "completion"]:
    return resolve_prompt_mode(cfg.prompt_mode, supports_chat)


def _prefill(cfg: InstructConfig, mode: str) -> str:
    """The JSON opening that is put in the prompt (and so is missing from the model's text)."""
    return JSON_OPENING if mode == "completion" and not cfg.constrained else ""


def build_prompt(caption: str, task: str, cfg: InstructConfig, mode: Literal["chat", "completion"]) -> str:
    _check_task(task)
    lo, hi = cfg.bounds(task)
    if mode == "chat":
        template = _read_prompt_file(f"instruct_{task}.txt", cfg.prompt_dir)
        return render(template, caption=caption.strip(), min_items=lo, max_items=hi)
    fs = _fewshot(cfg.prompt_dir)
    example = json.dumps(fs["examples"][task], ensure_ascii=False)
    prompt = render(
        fs["layout"],
        header=render(fs["headers"][task], min_items=lo, max_items=hi),
        example_caption=fs["example_caption"],
        example_json=example,
        # one line per caption: a newline inside it would look like the end of the block
        caption=" ".join(caption.split()),
    )
    return prompt + _prefill(cfg, mode)


def json_schema(task: str, cfg: InstructConfig) -> dict[str, Any]:
    """JSON schema of one answer, sent with the request when ``cfg.constrained``."""
    _check_task(task)
    lo, hi = cfg.bounds(task)
    text = {"type": "string", "minLength": 1, "maxLength": cfg.max_chars}  # a bound stops runaway strings
    props: dict[str, Any] = {"Question": text}
    required = ["Question"]
    if task == "mc":
        props["Options"] = {
            "type": "object",
            "properties": {letter: text for letter in LETTERS},
            "required": list(LETTERS),
            "additionalProperties": False,
        }
        props["Answer"] = {"type": "string", "enum": list(LETTERS)}
        required += ["Options", "Answer"]
    else:
        props["Answer"] = text
        required.append("Answer")
    item = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    return {
        "type": "object",
        "properties": {TOP_KEY: {"type": "array", "items": item, "minItems": lo, "maxItems": hi}},
        "required": [TOP_KEY],
        "additionalProperties": False,
    }


def build_request(
    row_id: str,
    caption: str,
    task: str,
    cfg: InstructConfig,
    seed: int,
    attempt: int,
    supports_chat: bool,
) -> GenerationRequest:
    mode = _resolve_mode(cfg, supports_chat)
    prompt = build_prompt(caption, task, cfg, mode)
    schema = json_schema(task, cfg) if cfg.constrained else None
    rseed = row_seed(seed, row_id, attempt, stream="instruct")
    if mode == "chat":
        return GenerationRequest(
            key=row_id, seed=rseed, messages=[{"role": "user", "content": prompt}], json_schema=schema
        )
    stop = tuple(_fewshot(cfg.prompt_dir).get("stop", ()))
    return GenerationRequest(key=row_id, seed=rseed, prompt=prompt, json_schema=schema, stop=stop)


# --------------------------------------------------------------------------- validation


def _looks_truncated(s: str, err: json.JSONDecodeError) -> bool:
    """The text ran out inside an open string/object/array (a length cut-off), vs. malformed JSON."""
    depth, in_str, esc = 0, False, False
    for ch in s:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    still_open = in_str or depth > 0
    # an error before the end is a real syntax error even if brackets are open
    return still_open and (err.msg.startswith("Unterminated string") or err.pos >= len(s.rstrip()))


def _parse(raw: str, repairs: list[str]) -> tuple[Any, str | None]:
    # from the first "{" (or "[": a bare list of items is reported as not_an_object, not bad_json)
    starts = [i for i in (raw.find("{"), raw.find("[")) if i >= 0]
    if not starts:
        return None, "bad_json"
    start = min(starts)
    if raw[:start].strip():
        repairs.append("stripped_preamble")
    s = raw[start:]
    dup_keys: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        # json keeps the last of repeated keys; a small model that runs items together
        # ({"Question": q1, "Answer": a1, "Question": q2, ...}) must not pass silently
        keys = [k for k, _ in pairs]
        if len(set(keys)) < len(keys):
            dup_keys.extend(keys)
        return dict(pairs)

    try:
        obj, end = json.JSONDecoder(object_pairs_hook=pairs_hook).raw_decode(s)
    except json.JSONDecodeError as e:
        return None, "truncated_json" if _looks_truncated(s, e) else "bad_json"
    if dup_keys:
        return None, "duplicate_keys"
    if s[end:].strip():
        repairs.append("ignored_trailing_text")
    return obj, None


def _canon(key: Any) -> str:
    return re.sub(r"[\s_\-]+", "", str(key)).casefold()


def _text(value: Any, repairs: list[str]) -> str | None:
    """A field as a stripped string; numbers are coerced; anything else is None (missing)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        repairs.append("coerced_to_string")
        value = str(value)
    if not isinstance(value, str):
        return None
    stripped = value.strip()
    if stripped != value:
        repairs.append("stripped_whitespace")
    return stripped


_OPTION_LABEL = re.compile(r"^\(?([A-Da-d])[.):]\s*")


def _options(value: Any, repairs: list[str]) -> tuple[dict[str, str] | None, str | None]:
    if isinstance(value, list):
        if len(value) > 4:
            return None, "extra_options"
        value = {letter: v for letter, v in zip(LETTERS, value, strict=False)}
        repairs.append("options_list_to_dict")
    if not isinstance(value, dict):
        return None, "missing_options"
    opts: dict[str, Any] = {}
    for k, v in value.items():
        letter = str(k).strip().strip("().:").upper()
        if letter != k:
            repairs.append("renamed_keys")
        opts[letter] = v
    if set(opts) - set(LETTERS):
        return None, "extra_options"
    if set(opts) != set(LETTERS):
        return None, "missing_options"
    out: dict[str, str] = {}
    for letter in LETTERS:
        t = _text(opts[letter], repairs)
        if t is None or not t:
            return None, "empty_option"
        m = _OPTION_LABEL.match(t)
        if m and m.group(1).upper() == letter and t[m.end() :].strip():
            t = t[m.end() :].strip()  # "A. red" under key "A": the label was repeated
            repairs.append("stripped_option_labels")
        out[letter] = t
    if len({_norm_sentence(t) for t in out.values()}) < len(out):
        return None, "duplicate_options"
    return out, None


def _norm_sentence(s: str) -> str:
    return " ".join(s.casefold().split()).rstrip(" .!?")


_LETTER_ONLY = re.compile(r"^\(?([A-Da-d])\)?$")
_LETTER_PUNCT = re.compile(r"^\(?([A-D])[.):]\s*(.*)$", re.S)  # "B." / "B) text" / "(B) text"
_LETTER_WORD = re.compile(  # "Option B" / "Answer: B" / "The correct answer is (B)."
    r"^(?:the\s+)?(?:correct\s+)?(?:option|answer|choice)\s*(?:is)?\s*:?\s*\(?([A-D])\)?\.?$", re.I
)


def _mc_answer(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an MC answer means, or None. Ambiguous forms ("A dog") are never guessed."""
    if answer in LETTERS:
        return answer
    by_text = {_norm_sentence(t): letter for letter, t in options.items()}
    if _norm_sentence(answer) in by_text:  # before letter patterns: the option text may start "A ..."
        return by_text[_norm_sentence(answer)]
    if m := _LETTER_ONLY.match(answer):
        return m.group(1).upper()
    if m := _LETTER_PUNCT.match(answer):
        letter, rest = m.group(1), m.group(2).strip()
        # "B) text" counts only when text is empty or is option B (else the model contradicts itself)
        if not rest or _norm_sentence(rest) == _norm_sentence(options[letter]):
            return letter
        return None
    if m := _LETTER_WORD.match(answer):
        return m.group(1).upper()
    return None


_WORD = re.compile(r"[0-9a-z]+(?:'[0-9a-z]+)*")


def words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def longest_copied_run(answer: str, caption: str) -> tuple[int, int]:
    """(longest run of consecutive caption words found in the answer, number of answer words)."""
    a, c = words(answer), words(caption)
    best = 0
    prev = [0] * (len(c) + 1)
    for i in range(1, len(a) + 1):
        cur = [0] * (len(c) + 1)
        ai = a[i - 1]
        for j in range(1, len(c) + 1):
            if ai == c[j - 1]:
                cur[j] = prev[j - 1] + 1
                if cur[j] > best:
                    best = cur[j]
        prev = cur
    return best, len(a)


def is_verbatim_copy(answer: str, caption: str, cfg: InstructConfig) -> bool:
    run, n = longest_copied_run(answer, caption)
    return n > 0 and run >= cfg.min_verbatim_words and run / n > cfg.max_verbatim_fraction


def _item(task: str, raw_item: Any, repairs: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(raw_item, dict):
        return None, "item_not_an_object"
    wanted = {"question": "Question", "answer": "Answer"}
    if task == "mc":
        wanted["options"] = "Options"
    fields: dict[str, Any] = {}
    for k, v in raw_item.items():
        name = wanted.get(_canon(k))
        if name is None:
            repairs.append("dropped_extra_keys")
            continue
        if name != k:
            repairs.append("renamed_keys")
        fields[name] = v
    q = _text(fields.get("Question"), repairs)
    if q is None:
        return None, "missing_question"
    if not q:
        return None, "empty_question"
    out: dict[str, Any] = {"Question": q}
    if task == "mc":
        if "Options" not in fields:
            return None, "missing_options"
        opts, reason = _options(fields["Options"], repairs)
        if opts is None:
            return None, reason
        out["Options"] = opts
    a = _text(fields.get("Answer"), repairs)
    if a is None:
        return None, "missing_answer"
    if not a:
        return None, "empty_answer"
    if task == "mc":
        letter = _mc_answer(a, out["Options"])
        if letter is None:
            return None, "answer_not_an_option_letter"
        if letter != a:
            repairs.append("normalized_answer")
        a = letter
    out["Answer"] = a
    return out, None


def _dedup(xs: list[str]) -> list[str]:
    return list(dict.fromkeys(xs))


_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


def _whole_sentences(answer: str, max_chars: int) -> str | None:
    """An answer that hit the schema's maxLength was cut by the grammar, not ended by the model:
    keep its complete sentences, or None when it has none."""
    if len(answer) < max_chars - 1 or _SENTENCE_END.search(answer[-2:] + " "):
        return answer
    ends = list(_SENTENCE_END.finditer(answer))
    return answer[: ends[-1].end()].strip() if ends else None


def validate(task: str, raw_text: str | None, caption: str, cfg: InstructConfig) -> Validation:
    """Parse and check one model output. Returns ``Validation(items, reason, repairs)``."""
    _check_task(task)
    repairs: list[str] = []

    def reject(reason: str) -> Validation:
        return Validation(None, reason, _dedup(repairs))

    if raw_text is None:
        return reject("bad_json")
    obj, reason = _parse(raw_text, repairs)
    if reason is not None:
        return reject(reason)
    if not isinstance(obj, dict):
        return reject("not_an_object")
    if TOP_KEY in obj:
        pairs = obj[TOP_KEY]
    else:
        alt = [k for k in obj if _canon(k) == _canon(TOP_KEY)]
        if not alt:
            return reject("missing_qa_pairs")
        repairs.append("renamed_keys")
        pairs = obj[alt[0]]
    if not isinstance(pairs, list):
        return reject("qa_pairs_not_a_list")
    lo, hi = cfg.bounds(task)
    if len(pairs) < lo:
        return reject("too_few_items")
    if len(pairs) > hi:
        if not cfg.truncate_extra_items:
            return reject("too_many_items")
        pairs = pairs[:hi]
        repairs.append("truncated_items")
    items: list[dict[str, Any]] = []
    for raw_item in pairs:
        item, reason = _item(task, raw_item, repairs)
        if item is None:
            return reject(reason or "bad_json")
        items.append(item)
    if len({_norm_sentence(it["Question"]) for it in items}) < len(items):
        return reject("duplicate_questions")
    if task != "mc":
        for it in items:
            answer = _whole_sentences(it["Answer"], cfg.max_chars)
            if answer is None:
                return reject("answer_cut_off")
            if answer != it["Answer"]:
                it["Answer"] = answer
                repairs.append("trimmed_cut_off_answer")
    if task in cfg.verbatim_tasks and any(is_verbatim_copy(it["Answer"], caption, cfg) for it in items):
        return reject("verbatim_copy")
    return Validation(items, None, _dedup(repairs))


# --------------------------------------------------------------------------- conversations


def to_conversations(task: str, items: list[dict[str, Any]]) -> list[dict[str, str]]:
    """LLaVA-style turns; see the module docstring for the exact format."""
    _check_task(task)
    turns: list[dict[str, str]] = []
    for i, it in enumerate(items):
        human = it["Question"]
        if task == "mc":
            lines = [OPTION_LINE.format(letter=k, text=it["Options"][k]) for k in LETTERS]
            human = human + "\n" + "\n".join(lines)
        if i == 0:
            human = f"{IMAGE_TOKEN}\n{human}"
        turns.append({"from": "human", "value": human})
        turns.append({"from": "gpt", "value": it["Answer"]})
    return turns


def output_features(input_features: Any) -> Any:
    """Features of :func:`generate_instructions`' output, for ``Dataset.map(features=...)``.

    Passing them keeps the column types fixed even when a whole batch is rejected (all None).
    """
    from datasets import Features, List, Value

    feats = dict(input_features)
    feats.update(
        {
            "conversations": List({"from": Value("string"), "value": Value("string")}),
            "reject_reason": Value("string"),
            "raw_output": Value("string"),
            "attempts": Value("int32"),
            "n_tokens": Value("int64"),
            "repairs": List(Value("string")),
        }
    )
    return Features(feats)


# --------------------------------------------------------------------------- the batched stage


def _check_rows(batch: dict[str, list]) -> tuple[list[str], list[str], list[str]]:
    for col in ("id", "caption", "task"):
        if col not in batch:
            raise ValueError(f"instruction stage: input column {col!r} is missing (have: {sorted(batch)})")
    ids = [str(x) for x in batch["id"]]
    tasks = list(batch["task"])
    for rid, task in zip(ids, tasks, strict=True):
        if task not in TASKS:
            raise ValueError(f"row {rid}: column 'task' = {task!r}; expected one of {', '.join(TASKS)}")
    captions = ["" if c is None else str(c) for c in batch["caption"]]
    return ids, captions, tasks


def generate_instructions(
    batch: dict[str, list], *, backend: Backend, cfg: InstructConfig, seed: int
) -> dict[str, list]:
    """``Dataset.map(batched=True)`` function: id, caption, task -> conversations or a reject reason.

    All still-pending rows go to the backend together, one ``generate`` call per attempt round.
    """
    ids, captions, tasks = _check_rows(batch)
    prefill = _prefill(cfg, _resolve_mode(cfg, backend.supports_chat))
    asked = [i for i in range(len(ids)) if captions[i].strip()]  # empty captions: recorded, never sent

    def validate_result(k: int, res: GenerationResult) -> tuple[Any, str | None, list[str]]:
        i = asked[k]
        v = validate(tasks[i], prefill + res.text, captions[i], cfg)
        return (to_conversations(tasks[i], v.items) if v.items is not None else None), v.reason, v.repairs

    outcomes = generate_with_retries(
        len(asked),
        lambda k, attempt: build_request(ids[asked[k]], captions[asked[k]], tasks[asked[k]], cfg, seed, attempt,
                                         backend.supports_chat),
        validate_result,
        backend,
        cfg.sampling,
        cfg.max_attempts,
    )
    by_row = dict(zip(asked, outcomes))
    empty = RowOutcome(reason="empty_caption")
    rows = [by_row.get(i, empty) for i in range(len(ids))]
    out = dict(batch)
    out.update(
        conversations=[o.value for o in rows],
        reject_reason=[o.reason if o.value is None else None for o in rows],
        raw_output=[prefill + o.raw if o.attempts else None for o in rows],
        attempts=[o.attempts for o in rows],
        n_tokens=[o.n_tokens for o in rows],
        repairs=[o.notes if o.value is not None else [] for o in rows],
    )
    return out


def revalidate(batch: dict[str, list], *, cfg: InstructConfig) -> dict[str, list]:
    """Re-run validation on stored ``raw_output`` (e.g. after changing the rules); no generation.

    Rows without a raw output keep their reject reason (``no_output`` if they had none).
    """
    ids, captions, tasks = _check_rows(batch)
    if "raw_output" not in batch:
        raise ValueError(f"revalidate: input column 'raw_output' is missing (have: {sorted(batch)})")
    conversations: list[list[dict[str, str]] | None] = []
    reasons: list[str | None] = []
    repairs: list[list[str]] = []
    old = batch.get("reject_reason") or [None] * len(ids)
    for raw, caption, task, prev in zip(batch["raw_output"], captions, tasks, old, strict=True):
        if raw is None:
            conversations.append(None)
            reasons.append(prev or "no_output")
            repairs.append([])
            continue
        v = validate(task, raw, caption, cfg)
        conversations.append(to_conversations(task, v.items) if v.items is not None else None)
        reasons.append(v.reason)
        repairs.append(v.repairs)
    out = dict(batch)
    out.update(conversations=conversations, reject_reason=reasons, repairs=repairs)
    out.setdefault("attempts", [0] * len(ids))
    out.setdefault("n_tokens", [0] * len(ids))
    return out


# --------------------------------------------------------------------------- task selection


def select_tasks(ids: list[str], mix: dict[str, int | float], seed: int) -> dict[str, str]:
    """Choose captions for each task, deterministically for ``seed``.

    ``mix`` values: an ``int`` is an absolute count (the 471K recipe: mc 171000, qa 199000,
    reasoning 100000); a ``float`` is a fraction of ``len(ids)``. When more than the available
    captions are asked for, every count is scaled down proportionally (largest remainder) and a
    ``UserWarning`` says so. Each id gets at most one task. Returns ``{id: task}`` in sorted id order.
    """
    unknown = set(mix) - set(TASKS)
    if unknown:
        raise ValueError(f"task mix: unknown task(s) {sorted(unknown)}; expected {', '.join(TASKS)}")
    uniq = sorted(set(map(str, ids)))
    if len(uniq) != len(ids):
        raise ValueError(f"select_tasks: {len(ids) - len(uniq)} duplicate caption id(s)")
    n = len(uniq)
    order = [t for t in TASKS if t in mix]  # fixed task order: the dict's order must not matter
    want: list[float] = []
    for t in order:
        v = mix[t]
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or not math.isfinite(v):
            raise ValueError(f"task mix: {t} = {v!r}; need a non-negative count (int) or fraction (float)")
        want.append(float(v) if isinstance(v, int) else float(v) * n)
    total = sum(want)
    if total > n:
        warnings.warn(
            f"task mix asks for {total:.0f} captions but {n} are available; "
            f"scaling every task's count by {n / total:.4f}",
            UserWarning,
            stacklevel=2,
        )
        want = [w * n / total for w in want]
        total = float(n)
    counts = _apportion(want, min(n, int(round(total))))
    perm = np.random.default_rng(seed).permutation(n)
    assigned: dict[str, str] = {}
    pos = 0
    for t, c in zip(order, counts, strict=True):
        for k in perm[pos : pos + c]:
            assigned[uniq[int(k)]] = t
        pos += c
    return dict(sorted(assigned.items()))


def _apportion(want: list[float], total: int) -> list[int]:
    """Integer counts summing to ``total`` (largest remainder; ties go to the earlier task)."""
    base = [math.floor(w + 1e-9) for w in want]
    rest = total - sum(base)
    by_frac = sorted(range(len(want)), key=lambda i: (-(want[i] - base[i]), i))
    for i in by_frac[: max(rest, 0)]:
        base[i] += 1
    return base
