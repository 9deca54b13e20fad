"""The root of the package's errors.

Every error the package raises on purpose derives from :class:`AnalysisWrapperError`, beside the
built-in class that says its kind (``ValueError`` for bad input, ``RuntimeError`` for a part that
failed), so a caller (the CLI, a notebook, a team's own code) catches ours in one clause and lets a
programming error through.
"""

import re

ERROR_CHARS = 300
"""An error message longer than this (on one line) is shown as its first sentence (:func:`one_line`)."""


class AnalysisWrapperError(Exception):
    """Base of every error the package raises on purpose; its message says what to do next."""


def one_line(text: str, limit: int | None = ERROR_CHARS) -> str:
    """An error message on one line, never cut in mid-sentence: its line breaks and indents become
    single spaces (HDF5, for one, breaks its messages in mid-sentence), and a message longer than
    ``limit`` (None: no limit) keeps its whole first sentence, then ``…`` (the rest is in the run's log)."""
    flat = " ".join(text.split())
    end = re.search(r"[.!?](?=\s)", flat) if limit is not None and len(flat) > limit else None
    return f"{flat[: end.end()]} …" if end else flat
