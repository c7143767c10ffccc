"""Config dataclasses from YAML or JSON: unknown keys refused, each value checked against its field's type.

Every settings class (training, adapters, noise head, calibration) is built from a mapping through
:func:`strict_from_dict`, so a typo or a wrong type is one error naming the key, before any work.
PyYAML reads ``1e-4`` (a number without a dot) as text; such text is read as the number it spells
where the field is numeric. Nothing else is converted, so a recorded config reads back unchanged.
"""

from __future__ import annotations

import os
import types
from dataclasses import fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml


def read_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """The mapping a YAML settings file holds ({} for an empty file).

    Raises:
        ValueError: naming the file, with the line and column of a syntax error (one line, not
            PyYAML's report), or ``what`` it should hold when it is not a mapping.
    """
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ValueError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected {what}")
    return values


def strict_from_dict(cls: type, values: dict[str, Any], what: str) -> Any:
    """``cls(**values)`` for a config dataclass; an unknown key is an error naming the valid ones,
    and a value of the wrong type an error naming its key (:func:`checked_value`)."""
    known = {f.name for f in fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {what} keys {sorted(unknown)}; valid: {sorted(known)}")
    hints = get_type_hints(cls)
    return cls(**{key: checked_value(key, value, hints[key]) for key, value in values.items()})


def checked_value(name: str, value: Any, hint: Any) -> Any:
    """``value`` if it fits the annotation ``hint`` (numeric text read as its number); Literal
    choices, mappings' contents and nested settings are left to the class's own checks.

    Raises:
        ValueError: naming ``name``, the type it needs and the value given.
    """
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return value
        inner = [arg for arg in args if arg is not type(None)]
        return checked_value(name, value, inner[0]) if len(inner) == 1 else value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        number = _number(value) if isinstance(value, str) else value
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ValueError(f"{name} must be {'an integer' if hint is int else 'a number'}, got {value!r}")
        if hint is int:
            if not float(number).is_integer():
                raise ValueError(f"{name} must be an integer, got {value!r}")
            return int(number) if isinstance(value, str) else number
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be text, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ValueError(f"{name} must be a list, got {value!r}")
        item = args[0] if args else Any
        return type(value)(checked_value(f"{name}[{i}]", v, item) for i, v in enumerate(value))
    if origin is dict and not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of settings, got {value!r}")
    return value


def _number(text: str) -> Any:
    """The int or float ``text`` spells, else ``text`` unchanged."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text
