"""Validating one Stage-2 output: parse, items, per-item drops, answer trimming, verbatim copying.

Every output is validated here even when the backend decoded under the JSON schema. A bad item
that can be left out (a repeated question, an MC item with same-meaning options, an answer the
caption does not support, an item copied from the few-shot example, a malformed question, an answer
that does not answer its question, MC options the caption supports none of: checks.py) is DROPPED
and listed in ``repairs``; the row is kept while at least the task's minimum of items remains, else
it is rejected with the reason of the first drop.

Verbatim copying (``qa`` answers by default): both texts are split into word tokens; ``run`` = the
longest run of consecutive caption words that also appears consecutively in the answer. An answer
is a copy when ``run >= min_verbatim_words`` and ``run / len(answer words) > max_verbatim_fraction``.
The minimum run lets short answers ("Blue.", "On the wooden bench") equal a caption phrase.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from unicorn_datasets.recipe import InstructSection
from unicorn_datasets.stages.instruct.checks import (
    copies_example,
    malformed_question,
    off_question_answer,
    repeated_answer,
    ungrounded_answer,
    unsupported_options,
)
from unicorn_datasets.stages.instruct.config import check_task
from unicorn_datasets.stages.instruct.parsing import canon, parse_item, parse_json
from unicorn_datasets.stages.instruct.schema import TOP_KEY
from unicorn_datasets.stages.instruct.support import TextEncoder, answer_margins, option_similarity
from unicorn_datasets.text.reserved import DEFAULT, ReservedTokens, screen_items
from unicorn_datasets.text.tokens import complete_sentences, ends_sentence, norm_text, words

VERBATIM_TASKS = ("qa",)  # tasks whose answers may not copy long runs of the caption (is_verbatim_copy)

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
    "answer_not_an_option_letter",
    # the nine below: items were dropped until fewer than the task's minimum remained
    "duplicate_questions",
    "duplicate_options",  # options that mean the same (equal text, one inside another, or embeddings alike)
    "answer_not_supported",  # the marked MC option is not the one the caption supports best
    "copied_example",  # questions or options taken from the few-shot example, about things the caption never names
    "malformed_question",  # not a question, cut off, or with a hint tail ("(Hint: ..., so the answer is")
    "off_question_answer",  # asks for a count/colour/size/time/place, the answer names none ("size?" -> "a pelican")
    "unsupported_options",  # an MC item none of whose options the caption says
    "ungrounded_answer",  # a QA answer whose own words (not the question's) are mostly not the caption's
    "repeated_answer",  # an answer that says what an earlier answer of the row said (the model looping)
    "verbatim_copy",
    "answer_cut_off",  # an answer stopped by the schema's maxLength mid-sentence, with no full sentence
    "reserved_token",  # a chat-template token in a question, option or answer (the model broke format)
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
    "dropped_duplicate_question",
    "dropped_synonym_options",
    "dropped_unsupported_answer",
    "dropped_copied_example",
    "dropped_malformed_question",
    "dropped_off_question_answer",
    "dropped_unsupported_options",
    "dropped_ungrounded_answer",
    "dropped_repeated_answer",
    "escaped_reserved_token",  # an `<image>`-like placeholder in generated text, written as its plain word
)
_DROPS = {
    "duplicate_questions": "dropped_duplicate_question",
    "duplicate_options": "dropped_synonym_options",
    "answer_not_supported": "dropped_unsupported_answer",
    "copied_example": "dropped_copied_example",
    "malformed_question": "dropped_malformed_question",
    "off_question_answer": "dropped_off_question_answer",
    "unsupported_options": "dropped_unsupported_options",
    "ungrounded_answer": "dropped_ungrounded_answer",
    "repeated_answer": "dropped_repeated_answer",
}


class Validation(NamedTuple):
    """(items, None, repairs) when valid, (None, reason, repairs) when rejected."""

    items: list[dict[str, Any]] | None
    reason: str | None
    repairs: list[str]


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
                best = max(best, cur[j])
        prev = cur
    return best, len(a)


def is_verbatim_copy(answer: str, caption: str, cfg: InstructSection) -> bool:
    run, n = longest_copied_run(answer, caption)
    return n > 0 and run >= cfg.min_verbatim_words and run / n > cfg.max_verbatim_fraction


def _whole_sentences(answer: str, max_chars: int) -> str | None:
    """An answer that hit the schema's maxLength was cut by the grammar, not ended by the model:
    keep its complete sentences, or None when it has none."""
    if len(answer) < max_chars - 1 or ends_sentence(answer):
        return answer
    return complete_sentences(answer) or None


def _contains(a: list[str], b: list[str]) -> bool:
    """Word list ``b`` occurs as a consecutive run inside ``a``."""
    return any(a[i : i + len(b)] == b for i in range(len(a) - len(b) + 1))


def same_meaning_options(options: dict[str, str]) -> bool:
    """Two options with equal normalised text, or one's words inside the other's ("red" / "dark red")."""
    texts = list(options.values())
    for i, a in enumerate(texts):
        for b in texts[i + 1 :]:
            if norm_text(a) == norm_text(b):
                return True
            wa, wb = words(a), words(b)
            if wa and wb and (_contains(wa, wb) or _contains(wb, wa)):
                return True
    return False


def _lexical_reason(task: str, item: dict[str, Any], caption: str, cfg: InstructSection,
                    example_in_prompt: bool) -> str | None:
    """The first model-free check (checks.py) ``item`` fails, or None."""
    on = cfg.item_checks
    if "malformed_question" in on and malformed_question(item["Question"], cfg.chars(task)):
        return "malformed_question"
    if ("copied_example" in on and example_in_prompt and cfg.max_example_overlap > 0
            and copies_example(item, caption, cfg.max_example_overlap)):
        return "copied_example"
    if task == "mc":
        if "unsupported_options" in on and unsupported_options(item["Question"], item["Options"], caption):
            return "unsupported_options"
    else:
        if "off_question_answer" in on and off_question_answer(item["Question"], item["Answer"]):
            return "off_question_answer"
        # QA only: a reasoning answer rightly brings in what the caption does not say ("herons hunt fish"); on
        # reasoning items the rule's precision was ~0.7 at every threshold (bench/README.md)
        if (task == "qa" and "ungrounded_answer" in on
                and ungrounded_answer(item["Question"], item["Answer"], caption)):
            return "ungrounded_answer"
    return None


def _drop_reasons(
    task: str, items: list[dict[str, Any]], caption: str, cfg: InstructSection, encoder: TextEncoder | None,
    example_in_prompt: bool = True,
) -> list[str | None]:
    """Per item, why it is dropped (None = kept)."""
    reasons: list[str | None] = [None] * len(items)
    seen: set[str] = set()
    for i, it in enumerate(items):
        q = norm_text(it["Question"])
        if q in seen:
            reasons[i] = "duplicate_questions"
        seen.add(q)
        if task == "mc" and reasons[i] is None and same_meaning_options(it["Options"]):
            reasons[i] = "duplicate_options"
        if reasons[i] is None:
            reasons[i] = _lexical_reason(task, it, caption, cfg, example_in_prompt)
        if (reasons[i] is None and task != "mc" and "repeated_answer" in cfg.item_checks
                and repeated_answer(it["Answer"], [items[j]["Answer"] for j in range(i) if reasons[j] is None])):
            reasons[i] = "repeated_answer"
    if task != "mc" or encoder is None:
        return reasons
    live = [i for i, r in enumerate(reasons) if r is None]
    sims = option_similarity([items[i] for i in live], encoder)
    for i, s in zip(live, sims, strict=True):
        if s >= cfg.max_option_similarity:
            reasons[i] = "duplicate_options"
    if cfg.min_answer_support_margin is not None:
        live = [i for i, r in enumerate(reasons) if r is None]
        margins = answer_margins([items[i] for i in live], caption, encoder)
        for i, m in zip(live, margins, strict=True):
            if m < cfg.min_answer_support_margin:
                reasons[i] = "answer_not_supported"
    return reasons


def validate(
    task: str,
    raw_text: str | None,
    caption: str,
    cfg: InstructSection,
    encoder: TextEncoder | None = None,
    reserved: ReservedTokens = DEFAULT,
    example_in_prompt: bool = True,
) -> Validation:
    """Parse and check one model output. ``encoder`` (None = off) enables the embedding checks;
    ``reserved``: tokens no conversation may carry (the image placeholder, the LLM's special tokens);
    ``example_in_prompt``: the prompt showed the few-shot example (completion mode), so an item can
    have been copied from it (in chat mode it cannot: no ``copied_example`` check there)."""
    check_task(task)
    repairs: list[str] = []

    def reject(reason: str) -> Validation:
        return Validation(None, reason, list(dict.fromkeys(repairs)))

    if raw_text is None:
        return reject("bad_json")
    obj, reason = parse_json(raw_text, repairs)
    if reason is not None:
        return reject(reason)
    if not isinstance(obj, dict):
        return reject("not_an_object")
    if TOP_KEY in obj:
        pairs = obj[TOP_KEY]
    else:
        alt = [k for k in obj if canon(k) == canon(TOP_KEY)]
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
        item, reason = parse_item(task, raw_item, repairs)
        if item is None:
            return reject(reason or "bad_json")
        items.append(item)
    drops = _drop_reasons(task, items, caption, cfg, encoder, example_in_prompt)
    repairs.extend(_DROPS[r] for r in drops if r is not None)
    kept = [it for it, r in zip(items, drops, strict=True) if r is None]
    if len(kept) < lo:
        return reject(next(r for r in drops if r is not None))
    items = kept
    if task != "mc":
        for it in items:
            answer = _whole_sentences(it["Answer"], cfg.chars(task))
            if answer is None:
                return reject("answer_cut_off")
            if answer != it["Answer"]:
                it["Answer"] = answer
                repairs.append("trimmed_cut_off_answer")
    if task in VERBATIM_TASKS and any(is_verbatim_copy(it["Answer"], caption, cfg) for it in items):
        return reject("verbatim_copy")
    if (reason := screen_items(items, repairs, reserved)) is not None:
        return reject(reason)
    return Validation(items, None, list(dict.fromkeys(repairs)))
