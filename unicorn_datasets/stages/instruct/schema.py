"""The JSON schema of one Stage-2 answer, sent with the request when ``cfg.constrained``."""

from __future__ import annotations

from typing import Any

from unicorn_datasets.recipe import InstructSection
from unicorn_datasets.stages.instruct.config import LETTERS, check_task

TOP_KEY = "QA Pairs"


def json_schema(task: str, cfg: InstructSection) -> dict[str, Any]:
    check_task(task)
    lo, hi = cfg.bounds(task)
    text = {"type": "string", "minLength": 1, "maxLength": cfg.chars(task)}  # a bound stops runaway strings
    props: dict[str, Any] = {"Question": text}
    required = ["Question"]
    if task == "mc":
        props["Options"] = {
            "type": "object",
            "properties": {letter: text for letter in LETTERS},
            "required": list(LETTERS),
            "additionalProperties": False,
        }
        props["Answer"] = {"type": "string", "enum": list(LETTERS)}
        required += ["Options", "Answer"]
    else:
        props["Answer"] = text
        required.append("Answer")
    item = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    return {
        "type": "object",
        "properties": {TOP_KEY: {"type": "array", "items": item, "minItems": lo, "maxItems": hi}},
        "required": [TOP_KEY],
        "additionalProperties": False,
    }
