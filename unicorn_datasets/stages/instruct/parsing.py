"""Parsing a Stage-2 model output into items, with the safe repairs (listed in ``REPAIRS``).

Every structural problem returns a stable snake_case reason instead of raising.
"""

from __future__ import annotations

import json
import re
from typing import Any

from unicorn_datasets.stages.instruct.config import LETTERS
from unicorn_datasets.text.tokens import norm_text


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


def parse_json(raw: str, repairs: list[str]) -> tuple[Any, str | None]:
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


def canon(key: Any) -> str:
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
    return out, None  # same-meaning options are dropped item by item in validation


_LETTER_ONLY = re.compile(r"^\(?([A-Da-d])\)?$")
_LETTER_PUNCT = re.compile(r"^\(?([A-D])[.):]\s*(.*)$", re.S)  # "B." / "B) text" / "(B) text"
_LETTER_WORD = re.compile(  # "Option B" / "Answer: B" / "The correct answer is (B)."
    r"^(?:the\s+)?(?:correct\s+)?(?:option|answer|choice)\s*(?:is)?\s*:?\s*\(?([A-D])\)?\.?$", re.I
)


def _mc_answer(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an MC answer means, or None. Ambiguous forms ("A dog") are never guessed."""
    if answer in LETTERS:
        return answer
    by_text = {norm_text(t): letter for letter, t in options.items()}
    if norm_text(answer) in by_text:  # before letter patterns: the option text may start "A ..."
        return by_text[norm_text(answer)]
    if m := _LETTER_ONLY.match(answer):
        return m.group(1).upper()
    if m := _LETTER_PUNCT.match(answer):
        letter, rest = m.group(1), m.group(2).strip()
        # "B) text" counts only when text is empty or is option B (else the model contradicts itself)
        if not rest or norm_text(rest) == norm_text(options[letter]):
            return letter
        return None
    if m := _LETTER_WORD.match(answer):
        return m.group(1).upper()
    return None



def parse_item(task: str, raw_item: Any, repairs: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    if not isinstance(raw_item, dict):
        return None, "item_not_an_object"
    wanted = {"question": "Question", "answer": "Answer"}
    if task == "mc":
        wanted["options"] = "Options"
    fields: dict[str, Any] = {}
    for k, v in raw_item.items():
        name = wanted.get(canon(k))
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
