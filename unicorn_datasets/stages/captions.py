"""Stage 1: expand each seed into one dense, objective caption paragraph.

Two prompt modes: `chat` (instruction-tuned models: the paper's requirements with the seed
appended) and `completion` (base models: a few-shot prefix ending in "Description:", stopped at
a blank line). Outputs that are empty, out of the word bounds, cut off or degenerate are retried
and finally recorded as rejections with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .. import prompts
from ..generation.base import Backend, GenerationRequest, GenerationResult, SamplingParams
from ..seeding import row_seed
from ..textutil import complete_sentences
from .retry import generate_with_retries

COMPLETION_STOPS = ("\n\n", "\nSeed:", "\nDescription:")
_LEAKS = ("Seed:", "Description:", "Seed caption:", "Requirements:")


@dataclass
class CaptionConfig:
    min_words: int = 51
    min_seed_overlap: float = 0.0  # share of the seed's content words the caption must mention (0 = off)
    max_words: int = 483
    max_attempts: int = 3
    prompt_mode: str = "chat"  # "chat" | "completion"
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=768))
    chat_template: str = field(default_factory=lambda: prompts.load("caption_chat.txt"))
    fewshot_template: str = field(default_factory=lambda: prompts.load("caption_fewshot.txt"))

    @classmethod
    def from_recipe(cls, section: dict[str, Any], prompt_mode: str) -> CaptionConfig:
        sampling = SamplingParams(**section.get("sampling", {}))
        keys = ("min_words", "max_words", "max_attempts", "min_seed_overlap")
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
            "sampling": self.sampling.as_dict(),
        }


def build_request(row_id: str, seed_text: str, cfg: CaptionConfig, build_seed: int, attempt: int) -> GenerationRequest:
    prompt = cfg.template.replace("{seed}", seed_text)
    seed = row_seed(build_seed, row_id, attempt, stream="captions")
    if cfg.prompt_mode == "chat":
        return GenerationRequest(key=row_id, seed=seed, messages=[{"role": "user", "content": prompt}])
    return GenerationRequest(key=row_id, seed=seed, prompt=prompt, stop=COMPLETION_STOPS)


def clean(text: str, finish_reason: str) -> str:
    """One paragraph of prose: whitespace collapsed; a cut-off tail trimmed to the last full sentence."""
    text = " ".join(text.split())
    if finish_reason == "length":
        text = complete_sentences(text)
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


def check(text: str, cfg: CaptionConfig, finish_reason: str, seed: str = "") -> str | None:
    """The rejection reason, or None when the caption is acceptable."""
    if not text:
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
    return None


def expand_batch(batch: dict[str, list], *, backend: Backend, cfg: CaptionConfig, build_seed: int) -> dict[str, list]:
    """Batched map function over seed rows (`id`, `seed`, `source`) -> captions or rejections."""
    ids, seeds = batch["id"], batch["seed"]

    def validate(i: int, res: GenerationResult) -> tuple[Any, str | None, list[str]]:
        text = clean(res.text, res.finish_reason)
        reason = check(text, cfg, res.finish_reason, seeds[i])
        return (text if reason is None else None), reason, []

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
    }
