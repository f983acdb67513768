"""Stage 1: expand each seed into one dense, objective caption paragraph.

Two prompt modes: `chat` (instruction-tuned models: the paper's requirements with the seed
appended) and `completion` (base models: a few-shot prefix ending in "Description:", stopped at
a blank line). Outputs that are empty, out of the word bounds, cut off by `max_new_tokens`,
degenerate or off their seed (content-word overlap and, with the recipe's text encoder, cosine)
are retried and finally recorded as rejections with the reason; every attempt's reason is kept.
A cut-off caption is rejected (`truncated`) unless `keep_truncated`, which keeps it trimmed to its
last full sentence and flags it in the `truncated` column: it is never trimmed silently.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import prompts
from ..generation.base import Backend, GenerationRequest, GenerationResult, SamplingParams
from ..seeding import row_seed
from .retry import generate_with_retries
from .seed_check import SeedCosine

COMPLETION_STOPS = ("\n\n", "\nSeed:", "\nDescription:")
_LEAKS = ("Seed:", "Description:", "Seed caption:", "Requirements:")
_SENTENCE_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


@dataclass
class CaptionConfig:
    min_words: int = 51
    min_seed_overlap: float = 0.0  # share of the seed's content words the caption must mention (0 = off)
    min_seed_cosine: float = 0.0  # seed-caption cosine with the recipe's text encoder, else off_seed (0 = off)
    keep_truncated: bool = False  # keep captions cut by max_new_tokens (trimmed, flagged) instead of rejecting
    max_words: int = 483
    max_attempts: int = 3
    prompt_mode: str = "chat"  # "chat" | "completion"
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=768))
    chat_template: str = field(default_factory=lambda: prompts.load("caption_chat.txt"))
    fewshot_template: str = field(default_factory=lambda: prompts.load("caption_fewshot.txt"))

    @classmethod
    def from_recipe(cls, section: dict[str, Any], prompt_mode: str) -> CaptionConfig:
        sampling = SamplingParams(**section.get("sampling", {}))
        keys = ("min_words", "max_words", "max_attempts", "min_seed_overlap", "min_seed_cosine", "keep_truncated")
        return cls(prompt_mode=prompt_mode, sampling=sampling, **{k: section[k] for k in keys if k in section})

    @property
    def template(self) -> str:
        return self.chat_template if self.prompt_mode == "chat" else self.fewshot_template

    def provenance(self) -> dict[str, Any]:
        return {
            "prompt_mode": self.prompt_mode,
            "prompt_sha": prompts.template_hash(self.template),
            "min_words": self.min_words,
            "max_words": self.max_words,
            "max_attempts": self.max_attempts,
            "min_seed_overlap": self.min_seed_overlap,
            "min_seed_cosine": self.min_seed_cosine,
            "keep_truncated": self.keep_truncated,
            "sampling": self.sampling.as_dict(),
        }


def build_request(row_id: str, seed_text: str, cfg: CaptionConfig, build_seed: int, attempt: int) -> GenerationRequest:
    prompt = cfg.template.replace("{seed}", seed_text)
    seed = row_seed(build_seed, row_id, attempt, stream="captions")
    if cfg.prompt_mode == "chat":
        return GenerationRequest(key=row_id, seed=seed, messages=[{"role": "user", "content": prompt}])
    return GenerationRequest(key=row_id, seed=seed, prompt=prompt, stop=COMPLETION_STOPS)


def clean(text: str, finish_reason: str, keep_truncated: bool = True) -> str:
    """One paragraph of prose: whitespace collapsed; a cut-off tail trimmed to the last full sentence
    when it is to be kept (`check` rejects it otherwise)."""
    text = " ".join(text.split())
    if finish_reason == "length" and keep_truncated:
        ends = list(_SENTENCE_END.finditer(text))
        text = text[: ends[-1].end()] if ends else ""
    return text


def is_degenerate(words: list[str]) -> bool:
    """Repetition loops: few distinct 4-grams, or one word dominating the text."""
    if len(words) < 12:
        return False
    grams = [tuple(w.lower() for w in words[i : i + 4]) for i in range(len(words) - 3)]
    if len(set(grams)) / len(grams) < 0.6:
        return True
    top = max(words.count(w) for w in set(words))
    return top / len(words) > 0.25


# Words that say how a seed was phrased, not what the image shows: they need not reappear.
_SEED_FILLER = frozenset(
    "a an the of in on at with and or to for from by is are was were be this that these those it its my our their "
    "who which what photo photograph photographed image picture close up closeup shot view type kind looks looking "
    "seems someone person candid taken showing shows depicting".split()
)
_WORD = re.compile(r"[a-z]+")


def _stem(word: str) -> str:
    return word[:5]  # crude but language-model-free: "wings"/"winged", "photographed"/"photograph"


def seed_overlap(seed: str, caption: str) -> float:
    """Share of the seed's content words (stemmed) that the caption mentions; 1.0 for a seed without any."""
    content = {_stem(w) for w in _WORD.findall(seed.lower()) if w not in _SEED_FILLER and len(w) > 2}
    if not content:
        return 1.0
    said = {_stem(w) for w in _WORD.findall(caption.lower())}
    return len(content & said) / len(content)


def check(
    text: str,
    cfg: CaptionConfig,
    finish_reason: str,
    seed: str = "",
    seed_cosine: Callable[[str], float] | None = None,
) -> str | None:
    """The rejection reason, or None when the caption is acceptable.

    `seed_cosine(caption)` (an encoder call) runs last, only for captions every cheap check passed."""
    if not text or (finish_reason == "length" and not cfg.keep_truncated):
        return "truncated" if finish_reason == "length" else "empty"
    if any(leak in text for leak in _LEAKS):
        return "prompt_leak"
    words = text.split()
    if is_degenerate(words):
        return "repetition"
    if len(words) < cfg.min_words:
        return "too_short"
    if len(words) > cfg.max_words:
        return "too_long"
    if cfg.min_seed_overlap > 0 and seed_overlap(seed, text) < cfg.min_seed_overlap:
        return "drifted_from_seed"
    if cfg.min_seed_cosine > 0:
        if seed_cosine is None:
            raise ValueError("captions.min_seed_cosine is set but no text encoder was given to the check")
        if seed_cosine(text) < cfg.min_seed_cosine:
            return "off_seed"
    return None


def expand_batch(
    batch: dict[str, list], *, backend: Backend, cfg: CaptionConfig, build_seed: int, encoder: Any = None
) -> dict[str, list]:
    """Batched map function over seed rows (`id`, `seed`, `source`) -> captions or rejections.

    `encoder` (the recipe's text encoder) is needed when `cfg.min_seed_cosine` > 0."""
    ids, seeds = batch["id"], batch["seed"]
    cosine = SeedCosine(encoder, seeds) if cfg.min_seed_cosine > 0 and encoder is not None else None

    def validate(i: int, res: GenerationResult) -> tuple[Any, str | None, list[str]]:
        text = clean(res.text, res.finish_reason, cfg.keep_truncated)
        reason = check(text, cfg, res.finish_reason, seeds[i], (lambda c: cosine(i, c)) if cosine else None)
        notes = ["truncated"] if reason is None and res.finish_reason == "length" else []
        return (text if reason is None else None), reason, notes

    outcomes = generate_with_retries(
        len(ids),
        lambda i, attempt: build_request(ids[i], seeds[i], cfg, build_seed, attempt),
        validate,
        backend,
        cfg.sampling,
        cfg.max_attempts,
    )
    return {
        **batch,
        "caption": [o.value for o in outcomes],
        "reject_reason": [o.reason if o.value is None else None for o in outcomes],
        "raw_output": [o.raw for o in outcomes],
        "attempts": [o.attempts for o in outcomes],
        "n_tokens": [o.n_tokens for o in outcomes],
        "gen_seed": [o.seed for o in outcomes],
        "truncated": [o.value is not None and "truncated" in o.notes for o in outcomes],
        "attempt_reasons": [o.reasons for o in outcomes],
    }
