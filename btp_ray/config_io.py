"""Config plumbing shared by every role: typed dataclasses built from plain dicts (YAML files, CLI flags) with
errors that name the offending field, dotted-path overrides (``replay.beta=2``), and serialisation back to YAML.

Each role owns its config dataclass (validated in ``__post_init__``); :mod:`btp_ray.experiment_config` nests them
into one experiment config. This module knows nothing about the roles.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import operator
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """An invalid config value. ``field`` is the dotted path (``replay.beta``) so callers can name the flag."""

    def __init__(self, field: str, message: str, *, source: str | None = None) -> None:
        self.field = field
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{field}: {message}" if field else f"{where}{message}")


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) < len(typing.get_args(tp)):
            return (args[0] if len(args) == 1 else functools.reduce(operator.or_, args)), True
    return tp, False


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert a YAML/CLI value to ``tp`` (scalars, enums, lists/tuples, dicts, nested dataclasses)."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional or tp is Any:
            return None
        raise ConfigError(path, "must not be null")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping of {tp.__name__} fields, got {type(value).__name__}")
        return from_dict(tp, value, path=path)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(path, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(path, f"must be one of {', '.join(str(m.value) for m in tp)}; got {value!r}") from None
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"expected a list, got {type(value).__name__}")
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
            return value.lower() in ("true", "yes", "1", "on")
        raise ConfigError(path, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (isinstance(value, float)):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(path, f"expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(path, f"expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(path, f"expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(path, f"expected a string, got {type(value).__name__}")
        return str(value)
    if tp is Path:
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(path, f"expected {tp.__name__}, got {type(value).__name__}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], *, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and invalid values raise :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{path}." if path else ""
        raise ConfigError(
            f"{prefix}{unknown[0]}", f"unknown field; valid fields of {cls.__name__}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        field_path = f"{path}.{name}" if path else name
        value = _over_default_section(fields[name], value)
        kwargs[name] = _coerce(value, hints[name], field_path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        message = str(exc)
        culprit = _field_named_in(message, cls, list(fields))
        field_path = f"{path}.{culprit}" if path and culprit else (culprit or path)
        raise ConfigError(field_path, message) from None


def _over_default_section(field: dataclasses.Field, value: Any) -> Any:
    """A partial mapping for a nested section whose default is a configured instance: fill the rest from that
    instance, so ``generation: {num_candidates: 4}`` keeps the section's other defaults rather than the class's."""
    if not isinstance(value, Mapping) or field.default_factory is dataclasses.MISSING:
        return value
    default = field.default_factory()
    if not dataclasses.is_dataclass(default):
        return value
    base = {f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init}
    return {**base, **value}


def _field_named_in(message: str, cls: type, names: list[str]) -> str | None:
    """Which field a constructor's error message is about: ``Cls.field ...`` or ``field: ...`` / ``field must``."""
    for name in sorted(names, key=len, reverse=True):
        if f"{cls.__name__}.{name}" in message:
            return name
    for name in sorted(names, key=len, reverse=True):
        if re.match(rf"{re.escape(name)}\b", message):
            return name
    return None


def to_dict(obj: Any) -> Any:
    """A dataclass (or nested values) as plain YAML/JSON-friendly data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    return obj


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``, creating intermediate mappings."""
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(dotted, f"{key!r} is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``'replay.beta=2'`` → ``('replay.beta', 2)``; the value is parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError("", f"override {text!r} must look like section.field=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError("", f"override {text!r} has no field name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or bad YAML raises :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", "config file not found", source=str(path))
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError("", f"invalid YAML: {exc}", source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {type(data).__name__}", source=str(path))
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, recursively for nested mappings."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def dump_yaml(data: Any, path: str | Path) -> None:
    """Write ``data`` (a dataclass or plain data) as YAML, atomically."""
    from btp_ray.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(data), sort_keys=False))
