"""Which analyses are served: installed packages' entry points, ``ANALYSIS_MODULES``, the shipped example.

``analysis_wrapper`` is a library: a team's own package declares its analyses in the entry-point group
``analysis_wrapper.analyses`` (``[project.entry-points."analysis_wrapper.analyses"]`` in its
``pyproject.toml``), and installing it is all it takes, with no setting in any process. A value is a module
(its ``analysis``, or a capsule-shaped module: :func:`analysis_of_module`) or ``module:attribute`` naming
an :class:`Analysis`. ``ANALYSIS_MODULES`` adds modules ad hoc (every module-level ``Analysis`` in them).

This package holds the shipped example (``isi_violations``). It is served only where no installed package
declares an analysis (this repository's checkout, its demo and tests): a team that installs
``analysis_wrapper`` as a library sees its own analyses, not the example. ``ANALYSIS_MODULES`` brings it
back on purpose (``analysis_wrapper.analyses.isi_violations``). A team's code location names its
analyses itself (``build_definitions(analyses=[...])``) and uses none of this.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import Any

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.capsule import capsule_analysis, is_capsule_module
from analysis_wrapper.errors import AnalysisWrapperError

ENTRY_POINT_GROUP = "analysis_wrapper.analyses"


class AnalysisDiscoveryError(AnalysisWrapperError, ValueError):
    """An entry point or module that does not give an analysis, or two analyses with one name; the
    message names where each came from."""


def analysis_of_module(module: ModuleType) -> Analysis[Any, Any]:
    """The analysis a module stands for: its module-level ``analysis`` (an :class:`Analysis`), else
    that of a module in the capsule template's shape (:func:`~analysis_wrapper.capsule.capsule_analysis`)."""
    candidate = getattr(module, "analysis", None)
    if isinstance(candidate, Analysis):
        return candidate
    if is_capsule_module(module):
        return capsule_analysis(module)
    found = "is not an Analysis" if candidate is not None else "is missing"
    raise AnalysisDiscoveryError(
        f"module {module.__name__!r} gives no analysis: its module-level `analysis` {found}, and it is not "
        "a capsule module (AnalysisSpecification, AnalysisOutputModel, run_analysis)"
    )


def _entry_point_source(entry_point: EntryPoint) -> str:
    dist = f" of {entry_point.dist.name}" if entry_point.dist is not None else ""
    return f"entry point {entry_point.name} = {entry_point.value!r}{dist}"


def analysis_of_entry_point(entry_point: EntryPoint, source: str | None = None) -> Analysis[Any, Any]:
    """The analysis an ``analysis_wrapper.analyses`` entry point declares; errors name ``source``
    (default: the entry point and its package)."""
    source = source or _entry_point_source(entry_point)
    try:
        loaded = entry_point.load()
    except Exception as exc:
        raise AnalysisDiscoveryError(f"{source} cannot be loaded: {type(exc).__name__}: {exc}") from exc
    if isinstance(loaded, ModuleType):
        try:
            return analysis_of_module(loaded)
        except AnalysisWrapperError as exc:
            raise AnalysisDiscoveryError(f"{source}: {exc}") from exc
    if not isinstance(loaded, Analysis):
        raise AnalysisDiscoveryError(f"{source} names {type(loaded).__name__} {loaded!r}, not an Analysis")
    return loaded


def analysis_of_reference(reference: str) -> Analysis[Any, Any]:
    """The analysis ``reference`` names, written as an entry point's value (a module, or
    ``module:attribute``): used where analyses are named in configuration (the Dagster component)."""
    entry_point = EntryPoint(name=reference, value=reference, group=ENTRY_POINT_GROUP)
    return analysis_of_entry_point(entry_point, f"analysis {reference!r}")


class _Found:
    """Analyses by name, each with where it came from, so a name given twice names both sources."""

    def __init__(self) -> None:
        self.analyses: dict[str, Analysis[Any, Any]] = {}
        self.sources: dict[str, str] = {}

    def add(self, analysis: Analysis[Any, Any], source: str) -> None:
        if self.analyses.get(analysis.name, analysis) is not analysis:
            raise AnalysisDiscoveryError(
                f"two analyses are named {analysis.name!r}: {self.sources[analysis.name]} and {source}"
            )
        self.analyses[analysis.name] = analysis
        self.sources.setdefault(analysis.name, source)


def _add_installed(found: _Found) -> None:
    for entry_point in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: (e.name, e.value)):
        found.add(analysis_of_entry_point(entry_point), _entry_point_source(entry_point))


def _add_modules(found: _Found, names: Iterable[str]) -> None:
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise AnalysisDiscoveryError(
                f"ANALYSIS_MODULES names {name!r}, which cannot be imported: {exc}"
            ) from None
        analyses = [a for a in vars(module).values() if isinstance(a, Analysis)]
        for analysis in analyses or [analysis_of_module(module)]:
            found.add(analysis, f"module {name} (ANALYSIS_MODULES)")


def _add_examples(found: _Found) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            module = importlib.import_module(f"{__name__}.{info.name}")
            found.add(analysis_of_module(module), f"the shipped example {module.__name__}")


def installed_analyses() -> dict[str, Analysis[Any, Any]]:
    """Every analysis declared in the ``analysis_wrapper.analyses`` entry points of installed packages."""
    found = _Found()
    _add_installed(found)
    return found.analyses


def analyses_in_modules(names: Iterable[str]) -> dict[str, Analysis[Any, Any]]:
    """The analyses of the named modules (``ANALYSIS_MODULES``): every module-level :class:`Analysis`,
    or the analysis of a capsule-shaped module."""
    found = _Found()
    _add_modules(found, names)
    return found.analyses


def discover_analyses(extra_modules: Iterable[str] = ()) -> dict[str, Analysis[Any, Any]]:
    """The analyses served by the CLI and this repository's code location, by name: every installed entry
    point's, else (none installed) the shipped example's; then those of ``extra_modules``
    (``ANALYSIS_MODULES``). Two analyses with one name are an error naming both sources."""
    found = _Found()
    _add_installed(found)
    if not found.analyses:
        _add_examples(found)
    _add_modules(found, extra_modules)
    return found.analyses
