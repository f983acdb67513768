"""A recipe = seeds + stages + models + counts, loaded from builders/NAME.yaml; flags override fields.

The recipe's fingerprint (everything that decides the rows) is stored in the build's work area:
a rerun with a different fingerprint into the same OUT is refused unless --overwrite.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

BUILDERS = Path(__file__).resolve().parent.parent / "builders"
STAGES = ("captions", "instruct", "pretrain")

# Fields that do not change a single row: excluded from the fingerprint.
_NOT_IN_FINGERPRINT = ("out", "overwrite", "description")


class RecipeError(ValueError):
    pass


def available() -> list[str]:
    return sorted(p.stem for p in BUILDERS.glob("*.yaml"))


def load_recipe(name_or_path: str) -> dict[str, Any]:
    p = Path(name_or_path)
    if not p.suffix:
        p = BUILDERS / f"{name_or_path}.yaml"
    if not p.exists():
        raise RecipeError(f"unknown recipe '{name_or_path}' (available: {', '.join(available())}, or a .yaml path)")
    try:
        recipe = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: invalid YAML: {e}") from e
    if not isinstance(recipe, dict):
        raise RecipeError(f"{p}: a recipe is a YAML mapping")
    recipe.setdefault("name", p.stem)
    unknown = set(recipe.get("stages", [])) - set(STAGES)
    if unknown:
        raise RecipeError(f"{p}: unknown stages {sorted(unknown)} (known: {', '.join(STAGES)})")
    return recipe


def set_field(recipe: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in the nested recipe, creating mappings on the way."""
    node = recipe
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(recipe)
    for key, value in overrides.items():
        if value is not None:
            set_field(out, key, value)
    return out


def parse_set(items: list[str]) -> dict[str, Any]:
    """`--set a.b=VALUE` pairs; values parse as YAML scalars (numbers, booleans, lists)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise RecipeError(f"--set expects KEY=VALUE, got '{item}'")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def fingerprint(recipe: dict[str, Any]) -> str:
    body = {k: v for k, v in recipe.items() if k not in _NOT_IN_FINGERPRINT}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_counts(recipe: dict[str, Any]) -> None:
    """Counts that must be whole numbers >= 1: 0 or less would build nothing or never finish a shard."""
    for key in ("limit", "shard_size", "transfer.shard_size", "llm.batch_size"):
        node: Any = recipe
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and (isinstance(node, bool) or not isinstance(node, int) or node < 1):
            flag = {"limit": " (--limit)", "shard_size": " (--shard-size)", "llm.batch_size": " (--batch-size)"}
            raise RecipeError(f"{key}{flag.get(key, '')} must be a whole number >= 1, got {node!r}")
