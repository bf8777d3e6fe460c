"""Checks behind facelab.config: typed building of config dataclasses from YAML mappings, and the
value rules the sections apply in `__post_init__`.

`build(cls, data, prefix)` turns a mapping into dataclass `cls`: a key that is not a field is an
error naming the key and the valid ones, and each value is checked against the field's type
(`_check_value`). `require` and `choice` are the one-line rules a section states about its values;
each failure is a FacelabError naming the dotted key, the value and the rule.
"""

import dataclasses
import types
import typing
from typing import Any

from facelab.errors import FacelabError


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """FacelabError `config KEY: VALUE is invalid: RULE` unless `ok`."""
    if not ok:
        raise FacelabError(f"config {key}: {value!r} is invalid: {rule}")


def choice(value: str, choices: typing.Iterable[str], key: str) -> None:
    """`require` that `value` is one of `choices` (a section's own names, e.g. optim.name)."""
    choices = list(choices)
    require(value in choices, key, value, f"must be one of {', '.join(choices)}")


def check_choice(value: str, choices: typing.Iterable[str], key: str) -> str:
    """FacelabError naming `key` unless `value` is one of `choices` (a registry's names, checked
    where the registry lives, e.g. pairs.loss); returns `value`."""
    choices = list(choices)
    if value not in choices:
        raise FacelabError(f"config {key}: {value!r} is not one of {', '.join(choices)}")
    return value


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise naming `key`. Ints are accepted for floats."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # `X | None`
        (inner,) = [t for t in typing.get_args(tp) if t is not type(None)]
        return None if value is None else _check_value(value, inner, key)
    if origin is list:
        if not isinstance(value, list):
            raise FacelabError(f"config {key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise FacelabError(f"config {key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):  # e.g. the items of data.datasets
        return build(tp, value, key + ".")
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 5e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise FacelabError(f"config {key}: expected {tp.__name__}, got {value!r}")


def build(cls: type, data: dict, prefix: str) -> Any:
    """Dataclass `cls` from the mapping `data`; `prefix` is its dotted place in the config
    (e.g. "optim.") for the error messages."""
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "file"
        raise FacelabError(f"config {where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise FacelabError(f"config: unknown key {where!r}; valid keys here: "
                               f"{', '.join(names)}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, value, where + ".")
        else:
            kwargs[key] = _check_value(value, tp, where)
    return cls(**kwargs)
