"""Frozen dataclass configs: field docs, JSON round trips and validated `key=value` overrides.

Every experiment's config is a tree of frozen dataclasses. Each field carries a one-line
docstring written under it (cleanrl style); `field_docs` reads those from the source, so the CLI
(`mortalnet config EXP`) documents every key without a second copy of the text.

Supported field types: bool, int, float, str, `Literal[...]`, `tuple[T, ...]` of those scalars,
and nested config dataclasses.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import math
import textwrap
import typing
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

C = TypeVar("C")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says which and what is valid."""


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of dataclass `cls` (and its bases)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def flat_keys(cls_or_cfg: Any, prefix: str = "") -> list[str]:
    """Every settable dotted key of a config class or instance, e.g. `training.epochs`."""
    cls = cls_or_cfg if isinstance(cls_or_cfg, type) else type(cls_or_cfg)
    keys = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += flat_keys(tp, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"tuple of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert `value` (from JSON or from a `--set` string) to field type `tp`, or raise."""
    origin = get_origin(tp)
    from_string = isinstance(value, str)
    try:
        if origin is Literal:
            choices = get_args(tp)
            if value not in choices:
                raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(repr, choices))}")
            return value
        if origin is tuple:
            (elem,) = [a for a in get_args(tp) if a is not Ellipsis]
            if from_string:
                text = value.strip().strip("[]()")
                items = [s.strip() for s in text.split(",") if s.strip()] if text else []
            elif isinstance(value, (list, tuple)):
                items = list(value)
            else:
                raise ConfigError(f"{key} expects a {_type_name(tp)}, got {value!r}")
            return tuple(_coerce(v, elem, key) for v in items)
        if tp is bool:
            if isinstance(value, bool):
                return value
            if from_string and value.lower() in ("1", "true", "yes", "on"):
                return True
            if from_string and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key} expects true or false, got {value!r}")
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ConfigError(f"{key} expects an integer, got {value!r}")
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ConfigError(f"{key} expects a number, got {value!r}")
            number = float(value)
            if not math.isfinite(number):  # JSON cannot store it: the run could not be resumed
                raise ConfigError(f"{key} expects a finite number, got {value!r}")
            return number
        if tp is str:
            if not isinstance(value, str):
                raise ConfigError(f"{key} expects a string, got {value!r}")
            return value
    except (ValueError, TypeError, OverflowError) as err:
        if isinstance(err, ConfigError):
            raise
        wanted = {int: "an integer", float: "a number"}.get(tp, f"a {_type_name(tp)}")
        raise ConfigError(f"{key} expects {wanted}, got {value!r}") from None
    raise ConfigError(f"{key}: unsupported config field type {tp!r}")


def _unknown_key(key: str, cls: type, prefix: str) -> ConfigError:
    valid = ", ".join(flat_keys(cls, prefix))
    return ConfigError(f"unknown config key {key!r}; valid keys: {valid}")


def from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Build config `cls` from a (possibly partial) nested dict; unknown keys are an error."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise _unknown_key(prefix + key, cls, prefix)
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        # a section's own check names its field ("batch_size must be >= 1"); say which section
        # it sits in (training.batch_size, teacher_training.batch_size, ...)
        if prefix and str(err).split(" ", 1)[0] in names:
            raise ConfigError(prefix + str(err)) from None
        raise


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready nested dict of a config (tuples become lists)."""

    def convert(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [convert(x) for x in v]
        return v

    return convert(cfg)


def merge(cfg: C, data: dict[str, Any]) -> C:
    """`cfg` with the values of nested dict `data` replacing its own (validated)."""
    full = to_dict(cfg)

    def deep_update(base: dict, upd: dict) -> None:
        for k, v in upd.items():
            if isinstance(v, dict) and isinstance(base.get(k), dict):
                deep_update(base[k], v)
            else:
                base[k] = v

    deep_update(full, data)
    return from_dict(type(cfg), full)


def override(cfg: C, assignment: str) -> C:
    """Apply one `dotted.key=value` override (the CLI's `--set`), validated against the type."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value, e.g. training.epochs=3")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        cls = type(node)
        names = {f.name for f in dataclasses.fields(cls)}
        if part not in names:
            raise _unknown_key(key, type(cfg), "")
        tp = _hints(cls)[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                raise _unknown_key(key, type(cfg), "")
            node = getattr(node, part)
        elif dataclasses.is_dataclass(tp):
            raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.{dataclasses.fields(tp)[0].name}=...")
    value = _coerce(raw, _hints(type(node))[parts[-1]], key)
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return merge(cfg, nested)


def apply_overrides(cfg: C, assignments: typing.Iterable[str]) -> C:
    """Apply several `key=value` overrides in order."""
    for a in assignments:
        cfg = override(cfg, a)
    return cfg


def describe(cfg: Any, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, value, docstring) for every leaf of a config instance."""
    rows = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            rows += describe(value, prefix + f.name + ".")
        else:
            rows.append((prefix + f.name, value, docs.get(f.name, "")))
    return rows


def dumps(cfg: Any) -> str:
    """The config as indented JSON."""
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)
