"""Stage-2 prompts: template files, rendering, the JSON opening, provenance.

Templates are data files in ``unicorn_datasets/prompts/``: ``instruct_{mc,qa,reasoning}.txt`` (chat
mode: one user message) and ``instruct_fewshot_example.json`` (completion mode, for base models:
header, one worked example caption -> JSON, then the caption and ``JSON:``). Placeholders are
``{name}`` for the names a template uses (``{caption}``, ``{min_items}``, ``{max_items}``; the
few-shot layout also has ``{header}``, ``{example_caption}``, ``{example_json}``). They are replaced
in ONE pass by name, so literal JSON braces need no escaping and a caption that itself contains
``{max_items}`` is never expanded. This is not ``str.format``.

Completion mode and the JSON opening: with ``constrained=True`` the grammar forces the opening
``{"QA Pairs": [``; with ``constrained=False`` the prompt ends with that opening (prefill) and no
schema is sent, because a schema describes a whole document and the continuation is not one.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from unicorn_datasets import prompts
from unicorn_datasets.recipe import InstructSection
from unicorn_datasets.stages.instruct.config import TASKS, check_task

JSON_OPENING = '{"QA Pairs": ['  # matches json.dumps of the few-shot example, so the prefill looks alike
FEWSHOT_FILE = "instruct_fewshot_example.json"
TEMPLATE_FILES = [f"instruct_{t}.txt" for t in TASKS] + [FEWSHOT_FILE]

Mode = Literal["chat", "completion"]


def fewshot() -> dict[str, Any]:
    try:
        return json.loads(prompts.load(FEWSHOT_FILE))
    except json.JSONDecodeError as e:
        raise ValueError(f"{FEWSHOT_FILE}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from e


def render(template: str, **values: Any) -> str:
    """Replace ``{name}`` for the given names in one pass; other braces are left alone."""
    if not values:
        return template
    pattern = re.compile(r"\{(" + "|".join(re.escape(k) for k in values) + r")\}")
    return pattern.sub(lambda m: str(values[m.group(1)]), template)


def prompt_provenance() -> dict[str, str]:
    """Hash of every template file in use, for the build manifest and the card."""
    return prompts.provenance(TEMPLATE_FILES)


def prefill(cfg: InstructSection, mode: Mode) -> str:
    """The JSON opening that is put in the prompt (and so is missing from the model's text)."""
    return JSON_OPENING if mode == "completion" and not cfg.constrained else ""


def build_prompt(caption: str, task: str, cfg: InstructSection, mode: Mode) -> str:
    check_task(task)
    lo, hi = cfg.bounds(task)
    if mode == "chat":
        return render(prompts.load(f"instruct_{task}.txt"), caption=caption.strip(), min_items=lo, max_items=hi)
    fs = fewshot()
    prompt = render(
        fs["layout"],
        header=render(fs["headers"][task], min_items=lo, max_items=hi),
        example_caption=fs["example_caption"],
        example_json=json.dumps(fs["examples"][task], ensure_ascii=False),
        # one line per caption: a newline inside it would look like the end of the block
        caption=" ".join(caption.split()),
    )
    return prompt + prefill(cfg, mode)
