"""Finding and loading recipes: a packaged NAME (builders/, shipped in the wheel) or a user's .yaml, with
overrides from flags and `--set`, validated and defaulted once into a frozen `Recipe`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from unicorn_datasets.packaged import shipped
from unicorn_datasets.recipe.sections import Recipe
from unicorn_datasets.recipe.validation import RecipeError, check_key_in


def _builders() -> Any:
    return shipped("builders")


def available() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for p in _builders().iterdir() if p.name.endswith(".yaml"))


def read_recipe(name_or_path: str) -> tuple[dict[str, Any], str]:
    """The raw mapping of a packaged recipe NAME or a user's .yaml path, and where it came from."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or "/" in name_or_path:  # a user's file; a bare NAME is a packaged recipe
        if not p.is_file():
            raise RecipeError(f"recipe file {p} not found")
        text, where, stem = p.read_text(encoding="utf-8"), str(p), p.stem
    else:
        res = _builders() / f"{name_or_path}.yaml"
        if not res.is_file():
            raise RecipeError(f"unknown recipe '{name_or_path}' (available: {', '.join(available())}, or a .yaml path)")
        text, where, stem = res.read_text(encoding="utf-8"), f"builders/{name_or_path}.yaml", name_or_path
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise RecipeError(f"{where}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a YAML mapping")
    data.setdefault("name", stem)
    return data, where


def load_recipe(
    name_or_path: str, overrides: Mapping[str, Any] | None = None, origins: Mapping[str, str] | None = None
) -> Recipe:
    """Read, apply `overrides` ({"a.b": value}, e.g. from flags and `--set`), validate and default: the one load."""
    data, where = read_recipe(name_or_path)
    origins = dict(origins or {})
    for key, value in (overrides or {}).items():
        check_key(key, origins.get(key, f"override {key}"))
        set_field(data, key, value)
    return Recipe.from_dict(data, source=where, origins=origins)


def set_field(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in the nested mapping, creating mappings on the way."""
    node = data
    *parents, leaf = dotted.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value


def check_key(dotted: str, origin: str) -> None:
    """Refuse a key path the recipe does not have, naming the nearest one."""
    check_key_in(Recipe, dotted, origin)


def parse_set(item: str) -> tuple[str, Any]:
    """One `--set a.b=VALUE`; the value parses as YAML (numbers, booleans, lists, mappings)."""
    if "=" not in item:
        raise RecipeError(f"--set expects KEY=VALUE, got '{item}'")
    k, v = item.split("=", 1)
    try:
        return k.strip(), yaml.safe_load(v)
    except yaml.YAMLError as e:
        raise RecipeError(f"--set {item}: the value is not valid YAML ({e})") from e
