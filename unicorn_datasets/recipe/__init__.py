"""A recipe = seeds + stages + models + counts: a YAML file loaded, validated and defaulted ONCE into a frozen `Recipe`.

Every key a build reads is a field of a dataclass below, with its one default; adding a key is one
line. Unknown keys, misspelt sections, wrong types and out-of-range values are `RecipeError`s that
name the key's path (`captions.min_words`), the nearest valid key and where the value came from
(the file, a flag, a `--set`). Packaged recipes live in `builders/` (shipped in the wheel as
`unicorn_datasets.builders`); a `.yaml` path loads a user's own file.

The recipe's fingerprint (everything that decides the rows) is stored in the build's work area:
a rerun with a different fingerprint into the same OUT is refused unless --overwrite. It is
computed from the defaulted recipe, so spelling a default out does not change it.
"""

from unicorn_datasets.recipe.loading import available, check_key, load_recipe, parse_set, read_recipe, set_field
from unicorn_datasets.recipe.sections import (
    INSTRUCT_ITEMS,
    INSTRUCT_MAX_CHARS,
    INSTRUCT_TASKS,
    ITEM_CHECKS,
    OPTION_FORMATS,
    STAGES,
    BalanceSection,
    CaptionsSection,
    InstructSection,
    InstructTask,
    ItemCheck,
    LLMSection,
    NearDupSection,
    OptionFormat,
    Recipe,
    ReportSection,
    SeedSource,
    StageName,
    TransferSection,
    fingerprint,
)
from unicorn_datasets.recipe.validation import RecipeError

__all__ = [
    "BalanceSection",
    "CaptionsSection",
    "INSTRUCT_ITEMS",
    "INSTRUCT_MAX_CHARS",
    "INSTRUCT_TASKS",
    "ITEM_CHECKS",
    "OPTION_FORMATS",
    "ItemCheck",
    "OptionFormat",
    "InstructSection",
    "InstructTask",
    "LLMSection",
    "NearDupSection",
    "Recipe",
    "RecipeError",
    "ReportSection",
    "STAGES",
    "SeedSource",
    "StageName",
    "TransferSection",
    "available",
    "check_key",
    "fingerprint",
    "load_recipe",
    "parse_set",
    "read_recipe",
    "set_field",
]
