"""Item checks that need no model, for defects seen in real Stage-2 rows (issue 19).

- ``copies_example``: the item is the few-shot example's, not the caption's: its question is near one
  of the example's and asks about the example's scene, or its options are an example item's options
  (3 of 4 alike) and the marked one is a thing the caption never says ("What color is the kingfisher?
  Blue / Red / Green / White" for a caption that names no colour). Only meaningful where the example
  is in the prompt (completion mode); validation.py runs it only there.
- ``malformed_question``: not a question (a statement), cut off (ends on "the", "and", ... or at the
  schema's maxLength), or carrying a hint tail ("(Hint: ..., so the answer is").
- ``off_question_answer``: the question asks for a kind of thing (a count, a colour, a size, a place,
  a time) and the answer names nothing of that kind ("What is the size of the bird?" -> "It is a
  brown pelican.").
- ``unsupported_options``: an MC item none of whose options the caption says in any word form.
- ``ungrounded_answer``: a QA answer whose own words (those not taken from its question) are mostly not the
  caption's: it answers from elsewhere ("the Earth's magnetic field" for a classroom with a map). Not for
  reasoning answers, which rightly add what the caption does not say.
- ``repeated_answer``: an answer that says what an earlier answer of the same row said (the model looping:
  "It is a favorite food because it is a place where it can easily reach its food." three times).

Measured on real demo outputs, hand-labelled: bench/stage2_checks.py (results in bench/README.md).
"""

from __future__ import annotations

import functools
import re
from typing import Any

from unicorn_datasets.stages.instruct.config import LETTERS
from unicorn_datasets.stages.instruct.prompting import fewshot
from unicorn_datasets.stages.instruct.schema import TOP_KEY
from unicorn_datasets.stages.instruct.support import caption_sentences
from unicorn_datasets.text.tokens import norm_text, words

# ---- word forms: a crude stemmer and number words, enough to see "two dogs" say "Two" -----------------
_NUMBERS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_STOP = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being it its this that these "
    "those there their they them he she his her one's as into onto over under about than then so very some any "
    "what which who whom whose where when why how do does did can could will would should may might has have had "
    "image picture photo scene shown seen visible appears".split()
)


# words for one time of day: an option "In the evening" is said by a caption "at dusk"
_SAME = {"dusk": "evening", "twilight": "evening", "sunset": "evening", "dawn": "morning", "sunrise": "morning",
         "midday": "noon", "nighttime": "night", "midnight": "night"}


def _stem(word: str) -> str:
    word = _SAME.get(word.removesuffix("'s"), word.removesuffix("'s"))
    if word in _NUMBERS:
        return _NUMBERS[word]
    if word.endswith(("xes", "ches", "shes", "sses")):  # "boxes" -> "box"; "trees" keeps its "e"
        word = word[:-2]
    for suffix, keep in (("ies", "y"), ("ing", ""), ("ed", ""), ("s", ""), ("ly", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            word = word[: -len(suffix)] + keep
            break
    if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiou":  # "sitting" -> "sitt" -> "sit"
        word = word[:-1]
    return word[:6]


def stems(text: str) -> set[str]:
    """The content words of ``text``, stemmed ("birds", "bird" -> "bird"; "two" -> "2")."""
    return {_stem(w) for w in words(text) if w not in _STOP}


# ---- copied from the few-shot example --------------------------------------------------------------
@functools.cache
def _example() -> tuple[tuple[frozenset[str], ...], frozenset[str], tuple[frozenset[str], ...]]:
    """Word sets of every question in the few-shot example (all tasks), the words of its caption, and the
    option texts of each of its MC items."""
    fs = fewshot()
    questions = tuple(frozenset(words(it["Question"])) for pairs in fs["examples"].values() for it in pairs[TOP_KEY])
    options = tuple(frozenset(norm_text(v) for v in it["Options"].values())
                    for it in fs["examples"]["mc"][TOP_KEY])
    return questions, frozenset(words(fs["example_caption"])), options


def copies_example_question(question: str, caption: str, max_overlap: float) -> bool:
    """The question is near one of the example's (word Jaccard >= max_overlap) and shares with it a word
    of the example's scene (4+ letters, in the example caption) that this caption never uses: it asks
    about the example's picture ("the boat", "the dock"), not this one."""
    questions, scene, _ = _example()
    q, said = frozenset(words(question)), set(words(caption))
    for ex in questions:
        shared = q & ex
        if shared and len(shared) / len(q | ex) >= max_overlap and any(
            len(w) >= 4 and w in scene and w not in said for w in shared
        ):
            return True
    return False


def copies_example_options(question: str, options: dict[str, str], caption: str) -> bool:
    """Three or more of the options are one example item's, and the caption says none of the four about the
    question's subject (with one said, the item asks about this picture; whether it marks the right one is
    answer support's)."""
    own = {norm_text(v) for v in options.values()}
    return any(len(own & ex) >= 3 for ex in _example()[2]) and unsupported_options(question, options, caption)


def copies_example(item: dict[str, Any], caption: str, max_overlap: float) -> bool:
    if copies_example_question(item["Question"], caption, max_overlap):
        return True
    return "Options" in item and copies_example_options(item["Question"], item["Options"], caption)


# ---- well-formed questions -------------------------------------------------------------------------
_HINT_TAIL = re.compile(r"\(\s*hint\b|\bhint\s*:|\b(?:so\s+)?the\s+(?:correct\s+)?answer\s+is\b|\banswer\s*:", re.I)
_WH = frozenset("what which who whom whose where when why how".split())
_ASKING_START = _WH | frozenset(
    "is are was were am do does did can could will would should shall may might must has have had "
    "describe explain identify name list tell compare count suggest imagine consider estimate infer".split()
)
# a question without its "?" that ends on one of these stopped mid-phrase ("sitting on" may end one)
_DANGLING = frozenset("the a an and or of that which this its their his her your my our as than but if so because "
                      "while whose".split())


def malformed_question(question: str, max_chars: int) -> bool:
    """Not a question, cut off, or with a hint tail."""
    text = question.strip()
    ws = words(text)
    if not ws or _HINT_TAIL.search(text):
        return True
    if text.endswith("?"):
        return False
    if len(text) >= max_chars - 1 or text[-1] in ",;:-(" or ws[-1] in _DANGLING:  # stopped by the schema / mid-phrase
        return True
    return ws[0] not in _ASKING_START and not _WH & set(ws)  # a statement, not a question


# ---- the answer answers its own question -----------------------------------------------------------
_COLOURS = frozenset(
    "red blue green yellow orange purple pink brown black white gray grey golden gold silver beige tan cream "
    "turquoise teal navy maroon crimson scarlet violet lavender ivory bronze copper amber olive khaki rust "
    "emerald azure indigo magenta charcoal chestnut auburn blond blonde ginger colorful colourful multicolored "
    "multicoloured striped spotted dark light pale bright vivid".split()
)
_COUNTS = frozenset(set(_NUMBERS) | set(
    "no none nobody nothing single pair couple both several few many multiple dozen dozens hundred hundreds "
    "thousand thousands numerous lone only handful various group half most all some much lot lots percent "
    "every each".split()))
_SIZES = frozenset(
    "small large big tiny huge little giant massive medium long short tall wide narrow high low thick thin deep "
    "shallow enormous compact miniature sized size length height width inch inches foot feet meter meters metre "
    "metres centimeters cm mm km mile miles scale larger smaller bigger taller longer shorter".split()
)
_PLACES = frozenset(
    "in on at near behind above below under beneath beside next between inside outside along across against over "
    "front top bottom left right center centre middle corner background foreground side edge around through "
    "among within onto into by nearby far upon away up down toward towards here there surface ground floor "
    "wall sky field water street road table shore".split()
)
_TIMES = frozenset(
    "morning afternoon evening night day daytime daylight noon midday midnight dawn dusk sunrise sunset twilight "
    "spring summer autumn fall winter season early late hour hours clock sun sunny dark light bright nighttime "
    "overcast".split()
)
# (what the question asks, the words an answer to it uses); the first match decides
_ASKS: tuple[tuple[re.Pattern[str], frozenset[str]], ...] = (
    (re.compile(r"\bhow many\b|\bwhat (?:is the )?number of\b|\bhow much\b"), _COUNTS),
    (re.compile(r"\b(?:what|which) colou?rs?\b|\bwhat is the colou?r\b|\bcolou?r (?:is|are|of)\b"), _COLOURS),
    # "how long is the bench" asks a size, "how long has it been" a duration: only the first is checked
    (re.compile(r"\bwhat size\b|\bthe size of\b|\bhow (?:big|large|small|tall|wide|high|deep)\b"
                r"|\bhow long (?:is|are)\b"), _SIZES),
    (re.compile(r"\bwhat time\b|^(?:\w+ )?when\b|\bwhat season\b|\btime of (?:the )?day\b"), _TIMES),
    (re.compile(r"^(?:\w+ )?where\b|\bin which (?:part|direction)\b"), _PLACES),
)


def off_question_answer(question: str, answer: str) -> bool:
    """The question asks for a count, colour, size, time or place and the answer names none."""
    q = " ".join(words(question))
    said = set(words(answer))
    for asks, kind in _ASKS:
        if asks.search(q):
            return not (said & kind or any(w.isdigit() for w in said))
    return False


# ---- the answer comes from the caption ---------------------------------------------------------------
def ungrounded_answer(question: str, answer: str, caption: str, min_new: int = 2, min_grounded: float = 0.25) -> bool:
    """The answer adds at least ``min_new`` content words to its question, and under ``min_grounded`` of them are
    said by the caption (thresholds: bench/stage2_checks.py; 0 of them misses answers that mix one caption word
    into an invented scene)."""
    new = stems(answer) - stems(question)
    return len(new) >= min_new and len(new & stems(caption)) < min_grounded * len(new)


def repeated_answer(answer: str, earlier: list[str], min_overlap: float = 0.6, min_words: int = 3) -> bool:
    """The answer's content words are, to ``min_overlap`` (Jaccard) or more, those of an earlier answer of the
    row; answers of fewer than ``min_words`` content words never count ("Two." may answer two questions)."""
    own = stems(answer)
    if len(own) < min_words:
        return False
    for prev in earlier:
        theirs = stems(prev)
        if len(theirs) >= min_words and len(own & theirs) / len(own | theirs) >= min_overlap:
            return True
    return False


# ---- MC options the caption supports ---------------------------------------------------------------
# question words that name what is asked, not what it is asked about
_ASKED = frozenset(stems("color colour kind type sort many much number size shape time day part main most likely "
                         "best describes following"))


_CLAUSE = re.compile(r"[,;:]\s*|\s+(?:and|but|while|where|whereas)\s+", re.I)


def _clauses(caption: str) -> list[str]:
    return [c for s in caption_sentences(caption) for c in _CLAUSE.split(s) if c.strip()]


def _said_about(about: set[str], caption: str) -> set[str]:
    """The content words of the caption's clauses about ``about`` (each with the clause after it, for "the cat,
    which is black"), or of the whole caption when no clause is; "a"/"an" before the subject says "1"."""
    clauses = _clauses(caption)
    near = [i for i, c in enumerate(clauses) if stems(c) & about]
    if not near:
        return stems(caption)
    said: set[str] = set()
    for i in near:
        text = " ".join(clauses[i : i + 2])
        said |= stems(text)
        ws = words(text)
        if any(w in ("a", "an") and {_stem(x) for x in ws[k + 1 : k + 4]} & about for k, w in enumerate(ws)):
            said.add("1")
    return said


def unsupported_options(question: str, options: dict[str, str], caption: str) -> bool:
    """No option shares a content word (any form) with what the caption says about the question's subject
    (the clauses sharing a content word with the question; the whole caption when none does). Clause-local,
    so "green" said of the chalkboard does not support "Green" as the colour of the map."""
    said = _said_about(stems(question) - _ASKED, caption)
    return not any(stems(options[k]) & said for k in LETTERS)
