"""LLaVA-style conversations from validated items.

One human/gpt pair per item (``{"from": "human" | "gpt", "value": str}``), ``"<image>\\n"``
prepended to the first human turn only:

- ``mc``: human = ``"<Question>\\nA. <opt A>\\nB. <opt B>\\nC. <opt C>\\nD. <opt D>"``, gpt = the bare
  letter, e.g. ``"B"``. The option lines follow ``instruct.option_format``: ``"A. ..."`` (default, the
  paper's figure) or ``"A: ..."`` (the authors' released data).
- ``qa`` / ``reasoning``: human = the question, gpt = the answer.
"""

from __future__ import annotations

from typing import Any

from unicorn_datasets.recipe import OPTION_FORMATS, InstructSection
from unicorn_datasets.stages.instruct.config import LETTERS, check_task
from unicorn_datasets.text.tokens import IMAGE_TOKEN


def option_line(letter: str, text: str, option_format: str = InstructSection.option_format) -> str:
    """One MC option line in the human turn: ``"A. text"`` or ``"A: text"``."""
    if option_format not in OPTION_FORMATS:
        raise ValueError(f"option_format must be one of {', '.join(OPTION_FORMATS)}, got {option_format!r}")
    return f"{letter}{option_format[1:]} {text}"


def to_conversations(task: str, items: list[dict[str, Any]],
                     option_format: str = InstructSection.option_format) -> list[dict[str, str]]:
    check_task(task)
    turns: list[dict[str, str]] = []
    for i, it in enumerate(items):
        human = it["Question"]
        if task == "mc":
            lines = [option_line(k, it["Options"][k], option_format) for k in LETTERS]
            human = human + "\n" + "\n".join(lines)
        if i == 0:
            human = f"{IMAGE_TOKEN}\n{human}"
        turns.append({"from": "human", "value": human})
        turns.append({"from": "gpt", "value": it["Answer"]})
    return turns
