"""The analyses this code location serves.

Every module in this package that defines a module-level ``analysis`` (an
:class:`~analysis_wrapper.analysis.Analysis`) is registered: adding an analysis means writing one file.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from analysis_wrapper.analysis import Analysis


def discover_analyses() -> dict[str, Analysis[Any, Any]]:
    """Import every module of this package and collect its ``analysis``, by name."""
    found: dict[str, Analysis[Any, Any]] = {}
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        candidate = getattr(module, "analysis", None)
        if isinstance(candidate, Analysis):
            if candidate.name in found:
                raise ValueError(f"two analyses are named {candidate.name!r} ({module.__name__} and another)")
            found[candidate.name] = candidate
    return found
