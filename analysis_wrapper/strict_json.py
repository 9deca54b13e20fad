"""JSON as a job file must be: plain RFC 8259 JSON, nothing Python's ``json`` would quietly accept.

``json.loads`` takes ``NaN`` and ``Infinity`` (recorded as null later), lets a duplicate key win over the
first, turns ``1e999`` into infinity, raises ``ValueError`` on a 5,000-digit integer and a
``RecursionError`` on deep nesting (how deep depends on the caller's stack: the CLI hit it where the
sensor did not). :func:`loads_strict` refuses each of these with a :class:`StrictJSONError` that names
the field, so every caller reports a bad file the same way instead of failing on it.
"""

from __future__ import annotations

import codecs
import json
import math
import re
from collections.abc import Iterator
from typing import Any

from analysis_wrapper.errors import AnalysisWrapperError

MAX_DEPTH = 64
"""Most levels of nesting a job file may have (AIND job files use 4)."""
MAX_INT_DIGITS = 100


class StrictJSONError(AnalysisWrapperError, ValueError):
    """Text that is not acceptable JSON; ``field`` is the dotted path of the offending value."""

    def __init__(self, problem: str, field: str | None = None, line: int | None = None) -> None:
        self.problem = problem
        self.field = field
        self.line = line
        super().__init__(problem)


class _Refused:
    """Stands in for a value the decoder must not produce; :func:`_check` reports where it sits."""

    def __init__(self, problem: str) -> None:
        self.problem = problem


class _Duplicates(dict[str, Any]):
    """An object whose text repeated a key (kept so :func:`_check` can name its field)."""

    duplicates: list[str]


class _Hooks:
    """The decoder's hooks for one call; ``flagged`` tells whether any value must be looked for."""

    def __init__(self) -> None:
        self.flagged = False

    def refuse(self, problem: str) -> _Refused:
        self.flagged = True
        return _Refused(problem)

    def constant(self, name: str) -> _Refused:
        return self.refuse(f"{name} is not a JSON value (JSON has no NaN or Infinity)")

    def float(self, text: str) -> float | _Refused:
        value = float(text)
        return value if math.isfinite(value) else self.refuse(f"number {text} is out of range")

    def int(self, text: str) -> int | _Refused:
        digits = len(text.lstrip("-"))
        if digits > MAX_INT_DIGITS:
            return self.refuse(f"an integer of {digits} digits (at most {MAX_INT_DIGITS})")
        return int(text)

    def object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        data = dict(pairs)
        if len(data) == len(pairs):
            return data
        self.flagged = True
        seen: set[str] = set()
        repeated = []
        for key, _value in pairs:
            if key in seen and key not in repeated:
                repeated.append(key)
            seen.add(key)
        marked = _Duplicates(data)
        marked.duplicates = repeated
        return marked


def _path(parts: tuple[str | int, ...]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int) or part == "[*]":  # an array index ("[*]": one not counted)
            out += part if part == "[*]" else f"[{part}]"
        else:
            out += f".{part}" if out else part
    if len(parts) > 8:  # a path 64 levels deep says nothing more than its start
        head = _path(parts[:4])
        return f"{head}… ({len(parts)} levels)"
    return out or "(top level)"


def _children(value: Any) -> Iterator[tuple[str | int, Any]]:
    if isinstance(value, dict):
        yield from value.items()
    elif isinstance(value, list):
        yield from enumerate(value)


def _check(data: Any, max_depth: int) -> None:
    """Walk the decoded value (iteratively: no recursion limit) for refused values, repeated keys
    and nesting deeper than ``max_depth``."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, where = stack.pop()
        if isinstance(value, _Refused):
            raise StrictJSONError(value.problem, _path(where))
        if isinstance(value, _Duplicates):
            keys = ", ".join(repr(k) for k in value.duplicates)
            raise StrictJSONError(f"duplicate key {keys} (JSON readers disagree on which wins)", _path(where))
        if isinstance(value, dict | list):
            if len(where) >= max_depth:
                raise StrictJSONError(f"nested deeper than {max_depth} levels", _path(where))
            stack.extend((child, (*where, key)) for key, child in _children(value))


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"(\s*:)?|[\[\]{}]')


def _scan_depth(text: str, max_depth: int) -> None:
    """Refuse nesting deeper than ``max_depth`` before decoding: how deep ``json.loads`` can go depends
    on the caller's stack, this does not. Only strings and brackets are looked at (a C regex), and the
    keys met on the way name the field."""
    path: list[str | int] = []
    key: str | int = "[*]"
    for token in _TOKEN.finditer(text):
        found = token.group(0)
        if token.group(1):  # an object key
            key = found[1 : found.rindex('"')]
        elif found in "{[":
            path.append(key)
            key = "[*]"
            if len(path) > max_depth:
                raise StrictJSONError(f"nested deeper than {max_depth} levels", _path(tuple(path[1:])))
        elif found in "}]" and path:  # (a string value is neither)
            path.pop()
            key = "[*]"


def loads_strict(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Decode UTF-8 JSON text, refusing what RFC 8259 does not allow or a job file cannot mean.

    Raises :class:`StrictJSONError` (``line`` set for syntax errors) and :class:`UnicodeDecodeError`
    for bytes that are not UTF-8 (UTF-16, Latin-1, binary).
    """
    if isinstance(text, bytes):
        if text.startswith(codecs.BOM_UTF8):
            raise StrictJSONError("starts with a byte order mark (BOM): write UTF-8 without one")
        text = text.decode("utf-8")  # strict: no guessing of UTF-16/32 as json.loads(bytes) does
    elif text.startswith("\ufeff"):
        raise StrictJSONError("starts with a byte order mark (BOM): write UTF-8 without one")
    _scan_depth(text, max_depth)
    hooks = _Hooks()
    try:
        data = json.loads(
            text,
            parse_constant=hooks.constant,
            parse_float=hooks.float,
            parse_int=hooks.int,
            object_pairs_hook=hooks.object,
        )
    except json.JSONDecodeError as exc:
        raise StrictJSONError(f"invalid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except RecursionError:
        raise StrictJSONError(f"invalid JSON: nested far deeper than {max_depth} levels") from None
    if hooks.flagged:  # find where the refused value sits, to name its field
        _check(data, max_depth)
    return data
