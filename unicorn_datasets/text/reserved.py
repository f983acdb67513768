"""Reserved tokens: strings a trainer or a chat template gives a meaning, so they must never reach
a conversation as ordinary text.

LLaVA/Bunny trainers count `<image>` placeholders to splice in image features: one more in a
caption crashes or silently misaligns training. Chat-template tokens (`<|im_end|>`, `[INST]`, ...)
in a seed end the prompt early or fake a turn. Seeds are repaired (`escape_seed`: the token
written as plain words, or dropped when it has none); LLM output that contains one is rejected
with reason `reserved_token` (`find_reserved`), since it means the model broke format.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

REASON = "reserved_token"

# Media placeholders (written as their plain word when repaired) and the chat-template tokens of
# the common model families (dropped when repaired). The in-process model adds its own (tokenizer_tokens).
MEDIA_TOKENS = ("<image>", "<video>", "<audio>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                "<|vision_end|>", "<image_soft_token>", "<start_of_image>", "<end_of_image>", "<img>", "</img>")
COMMON_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "<pad>",
    "<s>", "</s>", "<unk>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<|begin_of_text|>", "<|end_of_text|>",
    "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>",
    "<|pad|>", "<|eom_id|>", "<|python_tag|>", "<think>", "</think>", "[BOS]", "[EOS]", "[CLS]", "[SEP]", "[MASK]",
)
# Any `<|word|>` is a special token in some family; a user never writes one as prose.
_PIPE_TOKEN = r"<\|[A-Za-z0-9_.:-]{1,40}\|>"
_SPACE_BEFORE_PUNCT = re.compile(r" ([?.!,;:])")  # "the <image>?" -> "the image?", not "the image ?"
_MEDIA_WORD = re.compile(r"image|video|audio|vision|img")


def tokenizer_tokens(tokenizer: Any) -> list[str]:
    """The special and added special tokens of a loaded Hugging Face tokenizer."""
    found = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            found.add(str(tok))
    # Very short specials would match ordinary text; only marked-up ones count.
    return sorted(t for t in found if len(t) >= 3 and re.fullmatch(r"<.*>|\[.*\]", t))


class ReservedTokens:
    """The reserved strings of one build: the common ones plus those of the configured model."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        tokens = sorted({*MEDIA_TOKENS, *COMMON_TOKENS, *extra}, key=len, reverse=True)  # longest first
        self._bracketed = all(t[:1] in ("<", "[") for t in tokens)  # then a text without "<" or "[" has none
        self.tokens = tuple(tokens)
        self._pattern = re.compile("|".join([*map(re.escape, tokens), _PIPE_TOKEN]) + "|(?i:<image>)")

    def _may_hold(self, text: str) -> bool:
        """False when `text` cannot hold a token, decided without the regex scan (every response and seed)."""
        return not self._bracketed or "<" in text or "[" in text

    def find(self, text: str) -> list[str]:
        """The reserved tokens in `text`, in order of appearance."""
        if not self._may_hold(text):
            return []
        return [m.group(0) for m in self._pattern.finditer(text)]

    def escape(self, text: str) -> tuple[str, bool]:
        """`text` with every reserved token repaired: media placeholders as their plain word
        (`<image>` -> `image`), template tokens dropped. Returns (text, changed)."""
        if not self._may_hold(text) or not self._pattern.search(text):
            return text, False
        repaired = " ".join(self._pattern.sub(lambda m: f" {_plain_words(m.group(0))} ", text).split())
        return _SPACE_BEFORE_PUNCT.sub(r"\1", repaired), True


def _plain_words(token: str) -> str:
    word = re.sub(r"[^A-Za-z]+", " ", token).strip().lower()
    match = _MEDIA_WORD.search(word)
    return {"img": "image", "vision": "image"}.get(match.group(0), match.group(0)) if match else ""


DEFAULT = ReservedTokens()


def escape_seed(text: str, reserved: ReservedTokens = DEFAULT) -> tuple[str, bool]:
    return reserved.escape(text)


def find_reserved(text: str, reserved: ReservedTokens = DEFAULT) -> list[str]:
    return reserved.find(text)


def for_backend(backend: Any) -> ReservedTokens:
    """The reserved tokens of a build whose LLM is `backend` (its tokenizer's, when it has one in-process)."""
    tokenizer = getattr(backend, "tokenizer", None)
    return ReservedTokens(tokenizer_tokens(tokenizer)) if tokenizer is not None else DEFAULT


REPAIR = "escaped_reserved_token"


def screen_item_text(text: str, reserved: ReservedTokens = DEFAULT) -> tuple[str, str | None]:
    """For a generated question, option or answer: (text, outcome) where outcome is None (clean),
    REPAIR (only media placeholders such as `<image>`: written as their plain word, meaning intact)
    or REASON (a chat-template token: the model broke format; reject the row)."""
    found = reserved.find(text)
    if not found:
        return text, None
    if all(_plain_words(t) for t in found):
        return reserved.escape(text)[0], REPAIR
    return text, REASON


def screen_items(items: list[dict[str, Any]], repairs: list[str], reserved: ReservedTokens = DEFAULT) -> str | None:
    """Stage 2: screen every Question, option and Answer of validated items, in place. Media placeholders
    are repaired (REPAIR appended to `repairs`); returns REASON when a template token rejects the row."""
    for item in items:
        fields = [(item, key) for key in ("Question", "Answer") if isinstance(item.get(key), str)]
        fields += [(item["Options"], letter) for letter in item.get("Options") or {}]
        for holder, key in fields:
            holder[key], outcome = screen_item_text(holder[key], reserved)
            if outcome == REASON:
                return REASON
            if outcome and REPAIR not in repairs:
                repairs.append(REPAIR)
    return None
