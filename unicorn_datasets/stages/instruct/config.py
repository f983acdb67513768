"""Stage-2 settings: the tasks, their item bounds and length limits, and the validation thresholds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from unicorn_datasets.generation.base import PromptMode, SamplingParams
from unicorn_datasets.recipe import INSTRUCT_TASKS, ITEM_CHECKS, OPTION_FORMATS, InstructSection, LLMSection

TASKS: tuple[str, ...] = INSTRUCT_TASKS  # the task names a recipe may use
LETTERS: tuple[str, ...] = ("A", "B", "C", "D")


def check_task(task: Any) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def _default_bounds() -> dict[str, tuple[int, int]]:
    return {"mc": (6, 8), "qa": (6, 8), "reasoning": (2, 4)}


@dataclass
class InstructConfig:
    # (min, max) items per task; the paper asks 6-8 for mc/qa and leaves reasoning open (UNCONFIRMED)
    item_bounds: dict[str, tuple[int, int]] = field(default_factory=_default_bounds)
    # defaults: the recipe's (one default per key, in recipe.py); meanings there too
    max_verbatim_fraction: float = InstructSection.max_verbatim_fraction  # see validation.py
    min_verbatim_words: int = InstructSection.min_verbatim_words  # shorter copied runs are never a copy
    verbatim_tasks: tuple[str, ...] = ("qa",)
    max_attempts: int = InstructSection.max_attempts
    prompt_mode: PromptMode = LLMSection.prompt_mode
    constrained: bool = InstructSection.constrained
    truncate_extra_items: bool = InstructSection.truncate_extra_items
    sampling: SamplingParams = InstructSection.sampling
    max_chars: int | dict[str, int] = InstructSection.max_chars  # type: ignore[assignment]
    max_option_similarity: float = InstructSection.max_option_similarity
    max_example_overlap: float = InstructSection.max_example_overlap
    min_answer_support_margin: float | None = InstructSection.min_answer_support_margin
    topup_budget: int = InstructSection.topup_budget
    item_checks: tuple[str, ...] = InstructSection.item_checks
    option_format: str = InstructSection.option_format

    def __post_init__(self) -> None:
        bounds = {**_default_bounds(), **{k: tuple(v) for k, v in self.item_bounds.items()}}
        for task, (lo, hi) in bounds.items():
            if task not in TASKS:
                raise ValueError(f"item_bounds: unknown task {task!r}; expected one of {', '.join(TASKS)}")
            if not 1 <= lo <= hi:
                raise ValueError(f"item_bounds[{task!r}] = ({lo}, {hi}): need 1 <= min <= max")
        self.item_bounds = bounds  # type: ignore[assignment]
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.prompt_mode not in ("auto", "chat", "completion"):
            raise ValueError(f"prompt_mode must be auto, chat or completion, got {self.prompt_mode!r}")
        if not 0.0 < self.max_verbatim_fraction <= 1.0:
            raise ValueError(f"max_verbatim_fraction must be in (0, 1], got {self.max_verbatim_fraction}")
        if isinstance(self.max_chars, dict):
            unknown = set(self.max_chars) - set(TASKS)
            if unknown:
                raise ValueError(f"max_chars: unknown task(s) {sorted(unknown)}; expected {', '.join(TASKS)}")
        if self.topup_budget < 0:
            raise ValueError(f"topup_budget must be >= 0, got {self.topup_budget}")
        if unknown := set(self.item_checks) - set(ITEM_CHECKS):
            raise ValueError(f"item_checks: unknown check(s) {sorted(unknown)}; expected {', '.join(ITEM_CHECKS)}")
        if self.option_format not in OPTION_FORMATS:
            raise ValueError(f"option_format must be one of {', '.join(OPTION_FORMATS)}, got {self.option_format!r}")

    @classmethod
    def from_recipe(cls, section: InstructSection, prompt_mode: str) -> InstructConfig:
        keys = ("max_attempts", "max_verbatim_fraction", "min_verbatim_words", "constrained", "truncate_extra_items",
                "max_chars", "max_option_similarity", "max_example_overlap", "min_answer_support_margin",
                "topup_budget", "sampling", "item_checks", "option_format")
        return cls(item_bounds=dict(section.items), prompt_mode=prompt_mode,  # type: ignore[arg-type]
                   **{k: getattr(section, k) for k in keys})

    def bounds(self, task: str) -> tuple[int, int]:
        check_task(task)
        return self.item_bounds[task]

    def chars(self, task: str) -> int:
        """The schema's maxLength for ``task``'s strings."""
        if isinstance(self.max_chars, dict):
            return int(self.max_chars.get(task, 2000))
        return int(self.max_chars)

    @property
    def needs_encoder(self) -> bool:
        return self.min_answer_support_margin is not None
