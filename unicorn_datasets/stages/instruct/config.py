"""Stage-2 names: the tasks and the MC option letters. Its settings are the recipe's `instruct` section
(`recipe.InstructSection`: item bounds, length limits, validation thresholds), passed to every function here."""

from __future__ import annotations

from typing import Any

from unicorn_datasets.recipe import INSTRUCT_TASKS

TASKS: tuple[str, ...] = INSTRUCT_TASKS  # the task names a recipe may use
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")


def check_task(task: Any) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
