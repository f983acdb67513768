"""Turning a plain mapping into frozen section dataclasses: types, ranges, choices, unknown keys with the nearest
valid one, and where a bad value came from (the file, a flag, a `--set`). Knows no section: it reads their fields."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from unicorn_datasets.generation.base import out_of_range


class RecipeError(ValueError):
    """A recipe that cannot be built as written; the message names the key, its origin and a fix."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


def at_least(low: float) -> dict[str, Any]:
    """Field metadata: the smallest value allowed."""
    return {"min": low}


def _hints(cls: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _section_type(hint: Any) -> Any:
    """The dataclass a key leads into (None for a free mapping, the hint itself otherwise)."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) is dict:
        return None
    return hint


def _join(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


def _unknown(key: str, known: Mapping[str, Any], parent: str) -> str:
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    hint = f"did you mean '{_join(parent, near[0])}'?" if near else f"known: {', '.join(known)}"
    where = f"in '{parent}'" if parent else "at the top level"
    return f"unknown key '{_join(parent, key)}' {where} ({hint})"


def origin_of(path: str, source: str, origins: Mapping[str, str]) -> str:
    """The flag or --set that set `path` (or a parent of it), else the file."""
    probe = path
    while probe:
        if probe in origins:
            return origins[probe]
        probe = probe[: max(probe.rfind("."), probe.rfind("["), 0)]
    return source


def build_section(cls: Any, data: Any, path: str, base: Any) -> Any:
    """An instance of dataclass `cls` from a mapping; missing keys come from `base` (or the class defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RecipeError(f"'{path or 'recipe'}' must be a mapping of keys, got {_show(data)}", path)
    hints = _hints(cls)
    for key in data:
        if key not in hints:
            raise RecipeError(_unknown(str(key), hints, path), _join(path, str(key)))
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        p = _join(path, f.name)
        if f.name in data:
            kwargs[f.name] = _check(f, _coerce(data[f.name], hints[f.name], p, _default(f, base)), p)
        elif base is not None:
            kwargs[f.name] = getattr(base, f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"'{p}' is required", p)
    try:
        return cls(**kwargs)
    except RecipeError as e:  # a __post_init__ check: e.path is relative to this section
        raise RecipeError(f"'{_join(path, e.path)}' {e}", _join(path, e.path)) from None
    except (TypeError, ValueError) as e:
        raise RecipeError(f"'{path or 'recipe'}': {e}", path) from None


def _default(f: dataclasses.Field, base: Any) -> Any:
    if base is not None:
        return getattr(base, f.name)
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]


def _check(f: dataclasses.Field, value: Any, path: str) -> Any:
    choices = f.metadata.get("choices")
    why = out_of_range(value, f.metadata) if value is not None and isinstance(value, int | float) else None
    if why is not None:
        raise RecipeError(f"'{path}' {why}, got {value}", path)
    if choices is not None and value not in choices:
        raise _not_one_of(path, choices, value)
    return value


def _not_one_of(path: str, choices: tuple[Any, ...], value: Any) -> RecipeError:
    near = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return RecipeError(f"'{path}' must be one of {', '.join(map(str, choices))}, got {_show(value)}{hint}", path)


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _coerce(value: Any, hint: Any, path: str, default: Any = None) -> Any:
    """`value` checked against type `hint` (YAML already gave numbers and booleans their types)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        # a partial mapping fills in from this field's own default (e.g. captions.sampling)
        return build_section(hint, value, path, default if dataclasses.is_dataclass(default) else None)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for member in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, member, path)
            except RecipeError:
                continue
        names = " or ".join("null" if a is type(None) else getattr(a, "__name__", str(a)) for a in args)
        raise RecipeError(f"'{path}' must be {names}, got {_show(value)}", path)
    if origin is Literal:
        if value in args:
            return value
        raise _not_one_of(path, args, value)
    if origin is tuple:
        if isinstance(value, str) and args and args[-1] is Ellipsis:
            value = [v.strip() for v in value.split(",") if v.strip()]  # "a,b" for a list of names
        if not isinstance(value, list | tuple):
            raise RecipeError(f"'{path}' must be a list, got {_show(value)}", path)
        if args and args[-1] is Ellipsis:
            return tuple(_coerce(v, args[0], _join(path, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"'{path}' must be a list of {len(args)} values, got {_show(value)}", path)
        return tuple(_coerce(v, a, _join(path, i)) for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecipeError(f"'{path}' must be a mapping, got {_show(value)}", path)
        if typing.get_origin(args[0]) is Literal and (bad := [k for k in value if k not in typing.get_args(args[0])]):
            raise RecipeError(_unknown(str(bad[0]), dict.fromkeys(typing.get_args(args[0])), path),
                              _join(path, str(bad[0])))
        return {str(k): _coerce(v, args[1], _join(path, str(k))) for k, v in value.items()}
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"recipe field {path}: unsupported type {hint}")  # a bug in the dataclasses above
    if not ok:
        raise RecipeError(f"'{path}' must be {'a number' if hint is float else hint.__name__}, got {_show(value)}",
                          path)
    return value


def plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def check_key_in(root: Any, dotted: str, origin: str) -> None:
    """Refuse a key path that dataclass `root` does not have, naming the nearest one."""
    cls: Any = root
    done: list[str] = []
    for part in dotted.split("."):
        if cls is None:  # inside a free mapping (instruct.mix.*): any key
            return
        if not dataclasses.is_dataclass(cls):
            raise RecipeError(f"{origin}: '{'.'.join(done)}' has no sub-keys", dotted)
        hints = _hints(cls)
        if part not in hints:
            raise RecipeError(f"{origin}: {_unknown(part, hints, '.'.join(done))}", dotted)
        done.append(part)
        cls = _section_type(hints[part])
