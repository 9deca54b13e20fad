"""The root of the package's errors.

Every error the package raises on purpose derives from :class:`AnalysisWrapperError`, beside the
built-in class that says its kind (``ValueError`` for bad input, ``RuntimeError`` for a part that
failed), so a caller (the CLI, a notebook, a team's own code) catches ours in one clause and lets a
programming error through.
"""


class AnalysisWrapperError(Exception):
    """Base of every error the package raises on purpose; its message says what to do next."""
