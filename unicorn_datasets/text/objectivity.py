"""Phrases a Stage-1 caption must not hold: the paper's prompt asks for "observable, objective, plausible
details: no literary rhetoric, no subjective judgement or emotion", and models write them anyway.

Model-free (a few regexes, tens of microseconds a caption), so it runs inline with the cheap checks. Each
marker names its kind; `captions.max_subjective` is how many a caption may hold. Words the seed itself
uses do not count ("a delicious pizza" may stay delicious). Precision and recall on labelled real demo
captions: bench/README.md, "Stage 1: subjective captions".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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
_PATTERNS: list[tuple[str, str]] = [  # (kind, pattern), matched ignoring case
    ("judgement", r"\b(?:" + "|".join(re.escape(w) for w in _JUDGEMENT) + r")\b"),
    ("mood", r"\b(?:sense|feeling|atmosphere|mood|aura|air) of\b|\boverall (?:mood|atmosphere|feel|impression)\b"),
    # a narrator or a viewer in the text: "as you can see", "catch our eye", "at first glance"
    ("address", r"\b(?:you|your|yours|we|our|ours|at first glance|the viewer|one can (?:see|tell|notice|imagine))\b"),
    ("rhetoric", r"\bas (?:if|though)\b|\b(?:whisper|whispers|whispering|testament|tapestry|symphony|"
                 r"feast for the eyes)\b|\bseems? to (?:dance|sing|smile|invite|welcome|beckon)\b"),
    # a picture has no sound, smell or taste
    ("senses", r"\b(?:hear|hears|heard|hearing|sound|sounds|noise|smell|smells|scent|aroma|fragrance|fragrant|"
               r"taste|tastes|tasty)\b"),
    # what no picture shows: time spans, dates and history, guesses about the past, thoughts and wishes, speech
    ("story", r"\b(?:for|since|over) (?:the past |about |almost |nearly |more than )?" + _HOW_MANY
              + r"(?:hours|days|weeks|months|years|decades|centuries)\b|\bfor a (?:long |short )?(?:time|while)\b|"
              r"\b(?:ago|yesterday|tomorrow|used to|"
              r"last (?:night|week|month|year|summer|winter))\b|\b(?:1[6-9]|20)\d\d\b(?!s)|"
              r"\b(?:may|might|must|could) have (?:been|had|left|come|gone)\b|"
              r"\b(?:feels?|felt|thinks?|thought|wonders?|wondering|remembers?|remembered|hopes?|hoping|wants?|"
              r"wanted|wishes|dreams?|dreaming|decided|said|replied|answered|told)\b"),
    # about the picture or the text instead of what it shows: its source, what it lacks
    ("commentary", r"\b(?:taken (?:from|by)|website|online gallery|in this case|there is no reference|"
                   r"nothing in the (?:picture|image|photo)|it is (?:unclear|impossible|hard) to (?:say|tell|know))\b"),
]
# Case matters for these two: "I" the narrator, not "Henry I."; "us" the viewers, not "US" the country.
_CASE_SENSITIVE = [("address", r"(?<![\w.])I(?!\.)\b|\bus\b")]
_MARKERS = [(kind, re.compile(p, re.IGNORECASE)) for kind, p in _PATTERNS] + [
    (kind, re.compile(p)) for kind, p in _CASE_SENSITIVE]
_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def _stem(word: str) -> str:
    return word[:5]  # as stages/captions.py's seed overlap: the seed's "fearful" covers "fearfully"


@dataclass(frozen=True)
class Marker:
    kind: str  # judgement, mood, address, rhetoric, senses, story, commentary
    text: str  # the phrase as written


def subjective_markers(caption: str, seed: str = "") -> list[Marker]:
    """Every judgement, mood, narrator/viewer, rhetoric, non-visual-sense, story or commentary phrase in `caption`,
    in text order; a phrase whose words all appear in `seed` is the seed's, not the model's, and is skipped."""
    seed_words = {_stem(w) for w in _WORD.findall(seed.lower())}
    found: list[tuple[int, Marker]] = []
    for kind, pattern in _MARKERS:
        for m in pattern.finditer(caption):
            words = _WORD.findall(m.group(0).lower())
            if words and all(_stem(w) in seed_words for w in words):
                continue
            found.append((m.start(), Marker(kind, m.group(0))))
    return [marker for _, marker in sorted(found, key=lambda x: x[0])]
