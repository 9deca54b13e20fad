"""The analyses this code location serves.

Every module in this package that defines a module-level ``analysis`` (an
:class:`~analysis_wrapper.analysis.Analysis`) is registered: adding an analysis means writing one file.
Analyses kept in another package are served too when ``ANALYSIS_MODULES`` names their modules
(:func:`analyses_in_modules`).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Any

from analysis_wrapper.analysis import Analysis


def _add(found: dict[str, Analysis[Any, Any]], candidate: Analysis[Any, Any], where: str) -> None:
    if found.get(candidate.name, candidate) is not candidate:
        raise ValueError(f"two analyses are named {candidate.name!r} ({where} and another)")
    found[candidate.name] = candidate


def analyses_in_modules(names: Iterable[str]) -> dict[str, Analysis[Any, Any]]:
    """Every module-level :class:`Analysis` of the named modules (``ANALYSIS_MODULES``), by name."""
    found: dict[str, Analysis[Any, Any]] = {}
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ValueError(f"ANALYSIS_MODULES names {name!r}, which cannot be imported: {exc}") from None
        for candidate in vars(module).values():
            if isinstance(candidate, Analysis):
                _add(found, candidate, name)
    return found


def discover_analyses(extra_modules: Iterable[str] = ()) -> dict[str, Analysis[Any, Any]]:
    """Import every module of this package and collect its ``analysis``, by name; then the analyses
    of ``extra_modules``."""
    found: dict[str, Analysis[Any, Any]] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        candidate = getattr(module, "analysis", None)
        if isinstance(candidate, Analysis):
            _add(found, candidate, module.__name__)
    for candidate in analyses_in_modules(extra_modules).values():
        _add(found, candidate, "ANALYSIS_MODULES")
    return found
