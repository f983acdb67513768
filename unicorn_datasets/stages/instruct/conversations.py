"""LLaVA-style conversations from validated items.

One human/gpt pair per item (``{"from": "human" | "gpt", "value": str}``), ``"<image>\\n"``
prepended to the first human turn only:

- ``mc``: human = ``"<Question>\\nA. <opt A>\\nB. <opt B>\\nC. <opt C>\\nD. <opt D>"``, gpt = the bare
  letter, e.g. ``"B"``. (The paper's loader writes ``"A: ..."``; we use ``"A. ..."``: see
  ``OPTION_LINE``.)
- ``qa`` / ``reasoning``: human = the question, gpt = the answer.
"""

from __future__ import annotations

from typing import Any

from unicorn_datasets.stages.instruct.config import LETTERS, check_task
from unicorn_datasets.text.tokens import IMAGE_TOKEN

OPTION_LINE = "{letter}. {text}"  # one MC option line in the human turn


def to_conversations(task: str, items: list[dict[str, Any]]) -> list[dict[str, str]]:
    check_task(task)
    turns: list[dict[str, str]] = []
    for i, it in enumerate(items):
        human = it["Question"]
        if task == "mc":
            lines = [OPTION_LINE.format(letter=k, text=it["Options"][k]) for k in LETTERS]
            human = human + "\n" + "\n".join(lines)
        if i == 0:
            human = f"{IMAGE_TOKEN}\n{human}"
        turns.append({"from": "human", "value": human})
        turns.append({"from": "gpt", "value": it["Answer"]})
    return turns
