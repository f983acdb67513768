"""Phrases a Stage-1 caption must not hold: the paper's prompt asks for "observable, objective, plausible
details: no literary rhetoric, no subjective judgement or emotion", and models write them anyway.

Model-free (one tokenising pass, a word lookup, and a few phrase regexes tried only when one of their words
is present: ~0.1 ms a caption), so it runs inline with the cheap checks. Each marker names its kind;
`captions.max_subjective` is how many a caption may hold. Words the seed itself uses do not count ("a
delicious pizza" may stay delicious). Precision and recall on labelled real demo captions: bench/README.md,
"Stage 1: subjective captions".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unicorn_datasets.text.tokens import prefix_stem

# Judgement, emotion and mood: what a viewer feels, not what the picture shows.
_JUDGEMENT = (
    "beautiful beautifully stunning stunningly breathtaking gorgeous lovely magnificent majestic serene serenity "
    "tranquil tranquility peaceful idyllic charming picturesque enchanting captivating mesmerizing mesmerising "
    "awe-inspiring delightful wonderful wonderfully amazing incredible incredibly perfect perfectly ideal cozy "
    "cosy inviting whimsical harmonious pleasant exquisite impressive adorable cute splendid spectacular "
    "glorious dazzling elegant elegantly graceful gracefully exciting fascinating striking strikingly "
    "nostalgic romantic joyful joyous cheerful happiness joy sadness sorrow melancholy lonely loneliness "
    "warmth enjoying enjoy enjoys admire admiring evoke evokes evoking evocative delicious mouth-watering"
).split()
_HOW_MANY = (r"(?:several |many |a few |a couple of |hundreds of |thousands of |\d+ |"
             r"(?:one|two|three|four|five|six|seven|eight|nine|ten|twenty) )?")
# Single words are looked up in a dict after one tokenising pass; only phrases go through a regex (a regex
# alternation over ~100 words cost ~0.3 ms a caption, more than the rest of the check).
_WORDS: dict[str, str] = {
    **{w: "judgement" for w in _JUDGEMENT},
    # a narrator or a viewer in the text: "as you can see", "catch our eye"
    **{w: "address" for w in "you your yours we our ours".split()},
    **{w: "rhetoric" for w in "whisper whispers whispering testament tapestry symphony".split()},
    # a picture has no sound, smell or taste
    **{w: "senses" for w in ("hear hears heard hearing sound sounds noise smell smells scent aroma fragrance "
                             "fragrant taste tastes tasty").split()},
    # thoughts and wishes, speech
    **{w: "story" for w in ("ago yesterday tomorrow feel feels felt think thinks thought wonder wonders wondering "
                            "remember remembers remembered hope hopes hoping want wants wanted wishes dream dreams "
                            "dreaming decided said replied answered told").split()},
    "website": "commentary",
}
# (kind, pattern matched ignoring case, words one of which the caption must hold for the pattern to be tried:
# most captions hold none, and a skipped regex costs nothing; None = always tried)
_PHRASES: list[tuple[str, str, str | None]] = [
    ("judgement", r"\b(?:awe-inspiring|mouth-watering)\b", "awe mouth"),
    ("mood", r"\b(?:sense|feeling|atmosphere|mood|aura|air) of\b|\boverall (?:mood|atmosphere|feel|impression)\b",
     "sense feeling atmosphere mood aura air overall"),
    ("address", r"\b(?:at first glance|the viewer|one can (?:see|tell|notice|imagine))\b", "glance viewer can"),
    ("rhetoric", r"\bas (?:if|though)\b|\bfeast for the eyes\b|"
                 r"\bseems? to (?:dance|sing|smile|invite|welcome|beckon)\b", "if though feast seem seems"),
    # what no picture shows: time spans, dates and history, guesses about the past
    ("story", r"\b(?:for|since|over) (?:the past |about |almost |nearly |more than )?" + _HOW_MANY
              + r"(?:hours|days|weeks|months|years|decades|centuries)\b|\bfor a (?:long |short )?(?:time|while)\b",
     "hours days weeks months years decades centuries time while"),
    ("story", r"\b(?:used to|last (?:night|week|month|year|summer|winter))\b", "used last"),
    ("story", r"\b(?:may|might|must|could) have (?:been|had|left|come|gone)\b", "have"),
    ("story", r"\b(?:1[6-9]|20)\d\d\b(?!s)", None),
    # about the picture or the text instead of what it shows: its source, what it lacks ("taken from" was one:
    # held out, it flagged only viewpoints, "taken from behind a wall")
    ("commentary", r"\b(?:taken by|online gallery|in this case|there is no reference|"
                   r"nothing in the (?:picture|image|photo)|it is (?:unclear|impossible|hard) to (?:say|tell|know))\b",
     "taken gallery case reference nothing unclear impossible hard"),
]
_PHRASE_RULES = [(kind, re.compile(p, re.IGNORECASE), frozenset(t.split()) if t else None) for kind, p, t in _PHRASES]
_TOKEN = re.compile(r"[A-Za-z]+")
_WORD_KEYS = frozenset(_WORDS) | {"i", "us"}
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


@dataclass(frozen=True)
class Marker:
    kind: str  # judgement, mood, address, rhetoric, senses, story, commentary
    text: str  # the phrase as written


def _narrator(text: str, start: int, end: int) -> bool:
    """Is this capital "I" the narrator (not "Henry I." or "I2")? Case matters, as for "us" (not "US")."""
    before, after = text[start - 1:start], text[end:end + 1]
    return not (before == "." or before.isalnum() or before == "_" or after == "." or after.isalnum() or after == "_")


def subjective_markers(caption: str, seed: str = "") -> list[Marker]:
    """Every judgement, mood, narrator/viewer, rhetoric, non-visual-sense, story or commentary phrase in `caption`,
    in text order; a phrase whose words all appear in `seed` is the seed's, not the model's, and is skipped."""
    seed_words = {prefix_stem(w) for w in _WORD.findall(seed.lower())}
    found: list[tuple[int, Marker]] = []
    tokens = set(_TOKEN.findall(caption.lower()))
    if not tokens.isdisjoint(_WORD_KEYS):  # one pass to place them only when there is something to place
        for m in _TOKEN.finditer(caption):
            token = m.group(0)
            kind = _WORDS.get(token.lower())
            if kind is None:
                if not (token == "us" or (token == "I" and _narrator(caption, m.start(), m.end()))):
                    continue
                kind = "address"
            if prefix_stem(token.lower()) not in seed_words:
                found.append((m.start(), Marker(kind, token)))
    for kind, pattern, triggers in _PHRASE_RULES:
        if triggers is not None and triggers.isdisjoint(tokens):
            continue
        for m in pattern.finditer(caption):
            words = _WORD.findall(m.group(0).lower())
            if not (words and all(prefix_stem(w) in seed_words for w in words)):
                found.append((m.start(), Marker(kind, m.group(0))))
    return [marker for _, marker in sorted(found, key=lambda x: x[0])]
