"""Local paths made of names users chose (S3 keys and buckets, file names), proven to stay in their folder.

An S3 key is any string: ``/tmp/x`` (a leading ``/``), ``a/../../../tmp/x`` or ``a//b`` are valid keys,
and joined onto a local folder they name places outside it. Every such path is built here: the text
is refused when it holds an absolute path, an empty, ``.`` or ``..`` segment or a NUL, and the
resolved result must still lie inside the folder (which also catches symlinks pointing out).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from analysis_wrapper.errors import AnalysisWrapperError

NAME_MAX = 255
"""Longest file name (in bytes) Linux file systems take; S3 keys are longer, but the same names go to both."""
QUARANTINE_NAME_BYTES = 200
"""Longest name a file keeps when moved to ``registered/`` or ``rejected/``: room is left for a time
suffix (23) and ``.reason.txt`` (11) under :data:`NAME_MAX`."""

_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")


class UnsafePathError(AnalysisWrapperError, ValueError):
    """A user-supplied name would lead outside the folder it must stay in."""


def key_problem(key: str) -> str | None:
    """Why ``key`` (``/``-separated, a trailing ``/`` allowed) cannot name a place under a folder;
    None if it can."""
    if "\x00" in key:
        return "holds a NUL character"
    if key.startswith("/"):
        return "starts with '/' (it would be an absolute path)"
    parts = key[:-1].split("/") if key.endswith("/") else key.split("/")
    if key and "" in parts:
        return "has an empty path segment ('//')"
    for part in parts:
        if part in {".", ".."}:
            return f"has a '{part}' path segment"
    return None


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not an S3 bucket name (letters, digits, ``.``, ``-``, ``_``; not ``..``)."""
    if not _BUCKET.match(bucket) or ".." in bucket:
        return f"bucket name {bucket!r} is not a valid S3 bucket name"
    return None


def contained_path(root: Path, *relative: str, what: str | None = None) -> Path:
    """``root`` joined with ``relative`` (each checked by :func:`key_problem`), proven inside ``root``.

    Raises :class:`UnsafePathError` naming ``what`` (e.g. the whole S3 key) or the offending part."""
    base = root.resolve()
    target = base
    for part in relative:
        problem = key_problem(part)
        if problem:
            raise UnsafePathError(f"{what or part!r} {problem}: refused, nothing is written outside {base}")
        target = target / part
    resolved = target.resolve()
    if not resolved.is_relative_to(base):
        raise UnsafePathError(f"{what or '/'.join(relative)!r} leads outside {base}: refused")
    return resolved


def fit_name(name: str, limit: int = QUARANTINE_NAME_BYTES) -> str:
    """``name`` if it has at most ``limit`` bytes (UTF-8), else its start, ``~``, a hash of the whole name
    and its extension: different long names stay different, and the result is a valid file name."""
    if len(name.encode("utf-8")) <= limit:
        return name
    stem, dot, suffix = name.rpartition(".")
    if not dot or len(suffix) > 16:
        stem, suffix = name, ""
    tail = f"~{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:16]}"
    tail += f".{suffix}" if suffix else ""
    room = limit - len(tail.encode("utf-8"))
    head = stem.encode("utf-8", "surrogateescape")[:room].decode("utf-8", "ignore")
    return head + tail
