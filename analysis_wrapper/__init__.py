"""analysis_wrapper: dispatched analysis jobs as Dagster partitions, with provenance and no reruns.

A library a team installs: it writes an :class:`Analysis` (``Params``, ``Outputs``, ``run``), declares it
in the entry-point group ``analysis_wrapper.analyses`` and serves it from its own code location with
:func:`build_definitions`. Both are imported on first use, so ``import analysis_wrapper.settings`` (say)
stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from analysis_wrapper.analysis import Analysis
    from analysis_wrapper.code_location import build_definitions

__version__ = "0.1.0"
__all__ = ["Analysis", "__version__", "build_definitions"]


def __getattr__(name: str) -> Any:
    if name == "Analysis":
        from analysis_wrapper.analysis import Analysis

        return Analysis
    if name == "build_definitions":
        from analysis_wrapper.code_location import build_definitions

        return build_definitions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
