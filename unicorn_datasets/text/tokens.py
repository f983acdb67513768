"""Text constants and helpers shared by every stage: the image placeholder, sentence ends, word tokens."""

from __future__ import annotations

import re

IMAGE_TOKEN = "<image>"  # LLaVA-style placeholder in the first human turn
SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")
WORD = re.compile(r"\w+(?:['’]\w+)*")  # letters/digits, inner apostrophes kept; punctuation is no token
# Words that say how a text names a picture ("a close-up photo of ..."), not what the picture shows: the seed
# checks ignore them (captions.py's overlap, encoders/word_bag.py)
PICTURE_WORDS = frozenset(
    "photo photograph photographed image picture close closeup shot view type kind looks looking seems someone "
    "person candid taken showing shows depicting".split()
)


def complete_sentences(text: str) -> str:
    """``text`` up to its last sentence end ("" when it has none): drops a cut-off tail."""
    ends = list(SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""


def ends_sentence(text: str) -> bool:
    return bool(SENTENCE_END.search(text[-2:] + " "))


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters/digits, inner apostrophes kept): the one word tokenizer of the package
    (instruction checks, the diversity report, near-duplicate shingles, hashed TF-IDF)."""
    return WORD.findall(text.casefold())


def prefix_stem(word: str) -> str:
    """A word's first five letters: crude but model-free ("wings"/"winged", "fearful"/"fearfully"); how a
    caption is matched against its seed (seed overlap, the subjective check's seed words)."""
    return word[:5]


def norm_text(s: str) -> str:
    """Case, inner whitespace and final punctuation ignored: "Red." == "red"."""
    return " ".join(s.casefold().split()).rstrip(" .!?")
