"""Canonical JSON, the job fingerprint and the partition key.

The fingerprint is what makes "never run the same thing twice" precise: the sha256 of a canonical
JSON form of (analysis name, input locations, validated parameters, declared analysis version).
Canonical means sorted keys, no whitespace, one fixed form for floats, so that the key order of a
job file or of a parameter dict never changes it.

The partition key identifies the same job in Dagster. It is stable for (analysis, inputs,
parameters) and deliberately leaves the version out: a new analysis version re-runs the *same*
partitions, so their history stays in one place in the UI.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from analysis_wrapper.errors import AnalysisWrapperError

PARTITION_KEY_MAX_LENGTH = 64
_HASH_CHARS_IN_KEY = 20
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


class CanonicalJSONError(AnalysisWrapperError, ValueError):
    """A value cannot be put in canonical JSON (NaN, infinity, or a non-JSON type)."""


def _canonical_value(value: Any, path: str) -> Any:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise CanonicalJSONError(
                f"{path or 'value'}: text is not valid Unicode (lone surrogate)"
            ) from None
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalJSONError(f"{path or 'value'}: {value!r} has no canonical JSON form")
        # One fixed form: integral floats become ints (1.0 == 1), -0.0 becomes 0, other floats
        # keep Python's shortest round-trip repr (what json.dumps writes, the same on every platform).
        if value.is_integer():
            return int(value)
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"{path or 'value'}: key {key!r} is not a string")
            _canonical_value(key, f"{path}.<key>" if path else "<key>")
            out[key] = _canonical_value(item, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        return [_canonical_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise CanonicalJSONError(f"{path or 'value'}: {type(value).__name__} is not JSON data")


def canonical_json(value: Any) -> str:
    """Serialise JSON data canonically: sorted keys, no whitespace, fixed float form, UTF-8."""
    return json.dumps(
        _canonical_value(value, ""),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
    )


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def fingerprint(analysis: str, inputs: Sequence[str], parameters: Mapping[str, Any], version: str) -> str:
    """The job's fingerprint: 64 hex characters, ``_id`` and ``name`` of its record.

    ``parameters`` must already be the validated parameters in JSON mode
    (``Params.model_dump(mode="json")``), so coercions made by the model count, not the raw text.
    """
    return _sha256(
        {
            "analysis": analysis,
            "inputs": list(inputs),
            "parameters": dict(parameters),
            "version": version,
        }
    )


def _label(text: str) -> str:
    return _UNSAFE_KEY_CHARS.sub("_", text).strip("._-")


def partition_key(
    analysis: str, inputs: Sequence[str], parameters: Mapping[str, Any], label: str | None = None
) -> str:
    """A Dagster-safe partition key: ``[label-]<20 hex>``, only ``[A-Za-z0-9_.-]``, at most 64 chars.

    The hash covers analysis, inputs and parameters (not the version). ``label`` (for example the
    first input asset's name) only makes the key readable in the UI; it is cut to fit.
    """
    digest = _sha256({"analysis": analysis, "inputs": list(inputs), "parameters": dict(parameters)})
    suffix = digest[:_HASH_CHARS_IN_KEY]
    clean = _label(label or "")
    room = PARTITION_KEY_MAX_LENGTH - len(suffix) - 1
    if not clean:
        return suffix
    return f"{clean[:room].rstrip('._-')}-{suffix}"
