"""Stage 2: instruction data (multiple choice, question answering, complex reasoning) from captions.

config (settings) -> selection (which caption gets which task) -> prompting + schema (the request)
-> parsing + validation + support (the checks) -> conversations (the LLaVA-style output); stage
gives the generation engine one row's work (``InstructRows``) and runs the rounds (``InstructStage``).
"""

from unicorn_datasets.stages.instruct.config import LETTERS, TASKS
from unicorn_datasets.stages.instruct.conversations import to_conversations
from unicorn_datasets.stages.instruct.prompting import JSON_OPENING, build_prompt, prompt_provenance
from unicorn_datasets.stages.instruct.schema import json_schema
from unicorn_datasets.stages.instruct.selection import select_tasks, topup_inputs
from unicorn_datasets.stages.instruct.stage import InstructRows, InstructStage
from unicorn_datasets.stages.instruct.validation import REJECT_REASONS, REPAIRS, Validation, validate

__all__ = [
    "JSON_OPENING",
    "LETTERS",
    "REJECT_REASONS",
    "REPAIRS",
    "TASKS",
    "InstructRows",
    "InstructStage",
    "Validation",
    "build_prompt",
    "json_schema",
    "prompt_provenance",
    "select_tasks",
    "to_conversations",
    "topup_inputs",
    "validate",
]
