"""Deterministic answers for the fake OpenAI-compatible server, shaped so the project's validators accept them.

Everything here is a pure function of (prompt or messages, sampling seed, max_tokens): never of arrival
order, so the same request always gets the same text. Stdlib only, so the server starts fast.

- Stage 1 caption prompts (chat: "Seed caption: ..."; completion: few-shot ending "Seed: ...\\nDescription:")
  get one paragraph of 60-120 varied words that mentions every word of the seed.
- Stage 2 prompts (a JSON schema in the request, or a prompt asking for ``{"QA Pairs": [...]}``) get valid
  JSON for the task: ``mc`` items have four distinct options and a letter answer, ``qa`` / ``reasoning``
  answers are whole sentences built from the caption's words, item counts within the schema's bounds.
- Anything else gets a generic paragraph.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import dataclass
from typing import Any

TOKENS_PER_WORD = 1.3  # a typical English BPE ratio, for usage.completion_tokens
JSON_OPENING = '{"QA Pairs": ['  # the prefill the project's completion prompts end with (unconstrained mode)

_SEED_CHAT = re.compile(r"Seed caption:\s*(.+?)\s*$", re.S)
_SEED_FEWSHOT = re.compile(r"Seed:\s*([^\n]*)\nDescription:\s*$")
_CAPTION_CHAT = re.compile(r"Image description:\s*\n(.+?)\s*$", re.S)
_CAPTION_FEWSHOT = re.compile(r"Description:\s*([^\n]*)\nJSON:\s*(?:\{\"QA Pairs\": \[)?$")
_BOUNDS = re.compile(r"(?:between\s+(\d+)\s+and\s+(\d+))|(?:(\d+)\s+to\s+(\d+))")
_WORD = re.compile(r"[A-Za-z]+")

_COLOURS = "red blue green grey white black brown yellow orange beige silver pale dark".split()
_MATERIALS = "wooden metal stone glass ceramic woven plastic concrete brick leather cotton".split()
_PLACES = ("on the left", "on the right", "in the foreground", "in the background", "near the centre",
           "along the lower edge", "toward the upper corner", "just behind it", "beside the main subject")
_THINGS = ("a low wall", "a narrow doorway", "a potted plant", "a row of windows", "a wooden bench",
           "a lamp post", "a folded cloth", "a small table", "a painted sign", "a wire fence",
           "a stack of crates", "a tiled floor", "a metal railing", "a patch of grass", "a parked bicycle")
_LIGHT = ("Soft daylight falls from the left and leaves gentle shadows on the right side.",
          "Warm late-afternoon light gives the surfaces a golden tone.",
          "Diffuse overcast light keeps the contrast low across the whole frame.",
          "Bright midday sun casts short, sharp shadows on the ground.",
          "Indirect indoor lighting makes the colours look muted and even.")
_DETAIL = ("The {m} surface beneath shows fine scratches and a slightly worn texture.",
           "A {c} object next to {t} stands {p}, partly out of focus.",
           "Behind the subject, {t} is visible {p}, its edges softened by the depth of field.",
           "The {c} tones of {t} contrast with the {c2} backdrop.",
           "Small details such as {t} {p} add context to the scene.",
           "The composition places the main subject slightly off centre, with open space {p}.",
           "Texture is visible on the {m} elements, which look solid and well used.",
           "Further back, {t} and {t2} fill the space {p}.",
           "The edges of the frame show {t} cut off {p}.",
           "Shapes are mostly simple and rectangular, with a few rounded {m} forms {p}.",
           "A thin line of shadow runs along {t} {p}.",
           "The ground is covered with {c} {m} material that looks flat and dry.")


def _rng(*parts: Any) -> random.Random:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class Answer:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


def request_text(body: dict[str, Any]) -> str:
    """The prompt of a completions body, or the chat messages' contents joined (the last one decides)."""
    if "messages" in body:
        return "\n".join(str(m.get("content") or "") for m in body.get("messages") or [] if isinstance(m, dict))
    prompt = body.get("prompt", "")
    return prompt[0] if isinstance(prompt, list) and prompt else str(prompt)


def schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request carries, in any of the forms servers accept."""
    rf = body.get("response_format")
    if isinstance(rf, dict):
        spec = rf.get("json_schema")
        if isinstance(spec, dict) and isinstance(spec.get("schema"), dict):
            return spec["schema"]
        if isinstance(rf.get("value"), dict):  # TGI form
            return rf["value"]
        if isinstance(rf.get("schema"), dict):
            return rf["schema"]
    js = body.get("json_schema")  # SGLang (a string) / llama.cpp (an object)
    if isinstance(js, str):
        try:
            js = json.loads(js)
        except ValueError:
            return None
    return js if isinstance(js, dict) else None


def answer(body: dict[str, Any], *, invalid: bool) -> Answer:
    """The deterministic answer to one request; ``invalid`` asks for a too-short text / broken JSON."""
    text = request_text(body)
    seed = body.get("seed")
    max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 512)
    rng = _rng(text, seed, max_tokens)
    schema = schema_of(body)
    task = _instruct_task(text, schema)
    if task is not None:
        out = _instruct_json(text, schema, task, rng)
        if text.endswith(JSON_OPENING) and out.startswith(JSON_OPENING):
            out = out[len(JSON_OPENING):]  # the prompt already holds the opening: answer the continuation
        if invalid:
            out = out[: max(1, len(out) // 3)]  # cut mid-document: truncated / bad JSON
        return _budget(out, max_tokens, json_mode=True)
    if invalid:
        return _budget("A short picture.", max_tokens)
    seed_caption = _match(_SEED_FEWSHOT, text) or _match(_SEED_CHAT, text)
    return _budget(caption_paragraph(seed_caption or "", rng), max_tokens)


def _match(pattern: re.Pattern[str], text: str) -> str | None:
    m = pattern.search(text)
    return " ".join(m.group(1).split()) if m else None


def _budget(text: str, max_tokens: int, *, json_mode: bool = False) -> Answer:
    """Cut the text to max_tokens (estimated) the way a server does: finish_reason 'length'."""
    if json_mode:
        tokens = max(1, round(len(text) / 4))  # JSON is punctuation-heavy: ~4 characters a token
        if tokens <= max_tokens:
            return Answer(text, tokens, "stop")
        return Answer(text[: max_tokens * 4], max_tokens, "length")
    words = text.split()
    tokens = max(1, round(len(words) * TOKENS_PER_WORD)) if words else 0
    if tokens <= max_tokens:
        return Answer(text, tokens, "stop")
    keep = max(0, int(max_tokens / TOKENS_PER_WORD))
    return Answer(" ".join(words[:keep]), max_tokens, "length")


def caption_paragraph(seed: str, rng: random.Random) -> str:
    """One paragraph of 60-120 words: the seed's own words first, then varied concrete detail sentences."""
    seed = seed.strip().rstrip(".!?")
    target = rng.randint(60, 120)
    opening = f"The image shows {seed[0].lower() + seed[1:]}." if seed else "The image shows an everyday scene."
    sentences = [opening]
    details = list(_DETAIL)
    rng.shuffle(details)
    lights = list(_LIGHT)
    rng.shuffle(lights)
    pool = details[:4] + [lights[0]] + details[4:]
    for template in pool:
        if len(" ".join(sentences).split()) >= target:
            break
        c, c2 = rng.sample(_COLOURS, 2)
        t, t2 = rng.sample(_THINGS, 2)
        sentences.append(template.format(c=c, c2=c2, m=rng.choice(_MATERIALS), t=t, t2=t2, p=rng.choice(_PLACES)))
    words = " ".join(sentences).split()
    if len(words) > 120:  # a long seed: keep whole sentences up to the bound
        while len(" ".join(sentences).split()) > 120 and len(sentences) > 1:
            sentences.pop()
    return " ".join(sentences)


# --------------------------------------------------------------------------- instruction JSON


def _instruct_task(text: str, schema: dict[str, Any] | None) -> str | None:
    item = _item_schema(schema)
    if item is None and "QA Pairs" not in text:
        return None
    props = (item or {}).get("properties", {})
    if "Options" in props or (item is None and '"Options"' in text):
        return "mc"
    return "reasoning" if "reasoning" in text.lower() else "qa"


def _item_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if not schema:
        return None
    pairs = schema.get("properties", {}).get("QA Pairs")
    return pairs.get("items") if isinstance(pairs, dict) else None


def _bounds(text: str, schema: dict[str, Any] | None) -> tuple[int, int]:
    pairs = (schema or {}).get("properties", {}).get("QA Pairs") if schema else None
    if isinstance(pairs, dict) and "minItems" in pairs:
        return int(pairs["minItems"]), int(pairs.get("maxItems", pairs["minItems"]))
    m = _BOUNDS.search(text)
    if m:
        lo, hi = (int(g) for g in (m.group(1, 2) if m.group(1) else m.group(3, 4)))
        return lo, hi
    return 2, 4


def _max_chars(schema: dict[str, Any] | None) -> int:
    item = _item_schema(schema) or {}
    q = item.get("properties", {}).get("Question", {})
    return int(q.get("maxLength", 2000))


def _content_words(caption: str) -> list[str]:
    seen: dict[str, None] = {}
    for w in _WORD.findall(caption.lower()):
        if len(w) > 3 and w not in ("image", "shows", "with", "that", "this", "there", "their", "which"):
            seen.setdefault(w, None)
    return list(seen) or ["scene"]


def _fit(sentence: str, limit: int) -> str:
    """A whole sentence within the schema's maxLength."""
    if len(sentence) <= limit:
        return sentence
    cut = sentence[: max(1, limit - 1)].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "."


_QUESTIONS = ("What can be said about the {w} in the image?", "Where is the {w} placed in the image?",
              "How does the {w} look in this picture?", "Which detail of the {w} stands out?",
              "Why might the {w} appear the way it does?", "Is the {w} clearly visible in the image?",
              "What colour or texture does the {w} seem to have?", "How is the {w} related to its surroundings?")
# Answers are built from the caption's own words ({w2}, {w3}, {w4}: other content words of it), so Stage 2's
# ungrounded_answer check accepts them, and from a different word set per item, so repeated_answer does too;
# questions that ask for a place or a colour get an answer that names one (off_question_answer).
_ANSWERS_TO = {"Where is the {w} placed in the image?": "Near the {w2} and the {w3}, beside the {w4}.",
               "What colour or texture does the {w} seem to have?": "Grey, like the {w2} and the {w3} around it."}
_ANSWERS = ("The {w2} and the {w3} are next to it.",
            "The {w} is seen with the {w2} and the {w3}.",
            "It shows the {w2}, the {w3} and the {w4}.",
            "The {w} goes with the {w2}, the {w3} and the {w4}.",
            "Beside it are the {w2} and the {w3}.")
_REASONING = "The {w} sits beside the {w2} and the {w3}, near the {w4}, so the {w2} and the {w3} frame the {w}."
_WRONG = ("a bright red umbrella", "a sleeping dog", "an empty swimming pool", "a snowy mountain",
          "a crowded stadium", "a neon sign", "a sailing boat", "a stack of books", "a parked truck")


def _instruct_json(text: str, schema: dict[str, Any] | None, task: str, rng: random.Random) -> str:
    caption = _match(_CAPTION_FEWSHOT, text) or _match(_CAPTION_CHAT, text) or text[-400:]
    words = _content_words(caption)
    rng.shuffle(words)
    lo, hi = _bounds(text, schema)
    n = rng.randint(lo, hi)
    limit = _max_chars(schema)
    questions = list(_QUESTIONS)
    rng.shuffle(questions)
    items: list[dict[str, Any]] = []
    for i in range(n):
        w = words[i % len(words)]
        # distinct questions even when words or templates run out: the index makes each one unique
        q = questions[i % len(questions)].format(w=w)
        if i >= len(questions):
            q = q[:-1] + f" (detail {i + 1})?"
        if task == "mc":
            wrong = rng.sample(_WRONG, 3)
            letter = "ABCD"[rng.randrange(4)]
            opts = iter(wrong)
            options = {k: (f"the {w}" if k == letter else next(opts)) for k in "ABCD"}
            items.append({"Question": _fit(q, limit),
                          "Options": {k: _fit(v, limit) for k, v in options.items()}, "Answer": letter})
        else:
            template = questions[i % len(questions)]
            a = _REASONING if task == "reasoning" else rng.choice(_ANSWERS)
            if template in _ANSWERS_TO:
                a = _ANSWERS_TO[template] + (" " + a if task == "reasoning" else "")
            others = {f"w{k}": words[(i * 3 + k - 1) % len(words)] for k in (2, 3, 4)}
            items.append({"Question": _fit(q, limit), "Answer": _fit(a.format(w=w, **others), limit)})
    return json.dumps({"QA Pairs": items}, ensure_ascii=False)
