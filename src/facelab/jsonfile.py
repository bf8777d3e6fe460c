"""Strict JSON files: the one writer of every JSON record facelab produces.

Every JSON file facelab writes goes through `write_json_atomic` (or `strict_json` for JSON text
kept elsewhere, e.g. ONNX metadata): strict JSON (RFC 8259), never NaN or Infinity, which many
JSON readers (JavaScript's JSON.parse, jq, Go, serde) refuse. A non-finite float becomes `null`,
and the record says why in a top-level object "nulls": {path: reason}. A path names a value by
its keys joined with "." and list positions in brackets (`pairs.lfw.accuracy_std`,
`galleries.G1.cmc_curve.rate[3]`). The reason is the caller's (`reasons`, keyed by path; a reason
given for a path covers every null below it and is recorded once, under that path), else what
the value was ("was NaN", "was Infinity", "was -Infinity"). A record that is not a JSON object
has no place to explain a null: a non-finite number there is refused (ValueError).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facelab.io import write_atomic

NULLS = "nulls"  # top-level key of a JSON record: {path of a null, or of a subtree: reason}


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays and paths as plain JSON values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _what(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


class _Nulls:
    """Turns a value tree into plain JSON values: non-finite floats become None, noted with why."""

    def __init__(self, reasons: Mapping[str, str]) -> None:
        self.reasons, self.found = reasons, {}  # found: {path: reason}, in the order met

    def plain(self, obj: Any, path: str, chain: tuple[str, ...]) -> Any:
        if isinstance(obj, float):  # np.float64 included
            return float(obj) if math.isfinite(obj) else self._null(obj, path, chain)
        if obj is None or isinstance(obj, str | int):  # bool is an int
            return obj
        inner = (*chain, path) if path else chain
        if isinstance(obj, Mapping):
            return {k: self.plain(v, f"{path}.{k}" if path else str(k), inner)
                    for k, v in obj.items()}
        if isinstance(obj, list | tuple):
            return [self.plain(v, f"{path}[{i}]", inner) for i, v in enumerate(obj)]
        return self.plain(_json_default(obj), path, chain)

    def _null(self, value: float, path: str, chain: tuple[str, ...]) -> None:
        for where in (path, *reversed(chain)):  # the nearest path the caller explained
            if where in self.reasons:
                self.found.setdefault(where, self.reasons[where])
                return None
        self.found[path] = f"was {_what(value)}"
        return None


def strict_json(obj: Any, reasons: Mapping[str, str] | None = None, indent: int | None = 2,
                sort_keys: bool = False) -> str:
    """obj as strict JSON text: numpy values as plain numbers, paths as strings, every NaN/Infinity
    as null, explained under the top-level "nulls" key (module docstring; reasons: {path: why}).
    sort_keys: object keys sorted, a canonical text for comparing records.

    A "nulls" object the caller put in obj is kept and extended. ValueError when obj is not a
    mapping and holds a non-finite number (nowhere to explain it), or its "nulls" is not an object.
    """
    nulls = _Nulls(reasons or {})
    plain = nulls.plain(obj, "", ())
    if nulls.found:
        if not isinstance(plain, dict):
            where, why = next(iter(nulls.found.items()))
            raise ValueError(f"JSON record: non-finite number at {where} ({why}); a record that "
                             "is not an object has no place to explain a null")
        given = plain.get(NULLS, {})
        if not isinstance(given, dict):
            raise ValueError(f"JSON record: {NULLS!r} must be an object {{path: reason}}, "
                             f"got {given!r}")
        plain[NULLS] = {**given, **nulls.found}
    return json.dumps(plain, indent=indent, ensure_ascii=False, allow_nan=False,
                      sort_keys=sort_keys)


def write_json_atomic(path: Path, obj: Any, reasons: Mapping[str, str] | None = None) -> None:
    """Write obj as indented UTF-8 strict JSON (`strict_json`: NaN/Infinity -> null, explained
    under "nulls") to path atomically. The one writer of every JSON file facelab produces."""
    text = strict_json(obj, reasons) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
