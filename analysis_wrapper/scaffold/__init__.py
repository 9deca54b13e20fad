"""A team's own analysis project, written from the templates in ``templates/`` (``analysis-wrapper new``).

The project is a small installable package: ``pyproject.toml`` declares the analysis in the entry-point
group ``analysis_wrapper.analyses`` (so ``analysis-wrapper`` finds it once installed, with no setting)
and the Dagster code location (``[tool.dagster]``); ``src/<package>/`` holds the analysis module and
``definitions.py``; ``tests/`` runs the analysis on a generated job through the real path
(:mod:`analysis_wrapper.testing`). As generated its analysis runs on any job (the size of each input),
so the project is complete before any science is written.

From a capsule (``--from-capsule run_capsule.py``) the capsule's module is copied unchanged into the
package as ``<NAME>.py`` (a capsule module's analysis is named by its ``ANALYSIS_NAME``, else by the
module's name) and served as it is (:func:`analysis_wrapper.analyses.analysis_of_module`).
"""

from __future__ import annotations

import ast
import importlib.util
import keyword
import pprint
import shutil
import sys
import types
import typing
import uuid
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from analysis_wrapper.analysis import _NAME_PATTERN as NAME_PATTERN  # the rule every Analysis name follows
from analysis_wrapper.capsule import OUTPUT_MODEL_NAME, RUN_FUNCTION_NAME, SPECIFICATION_NAMES
from analysis_wrapper.errors import AnalysisWrapperError

CAPSULE_DEPENDENCIES = {
    "aind_data_schema": "aind-data-schema",
    "analysis_pipeline_utils": "analysis-pipeline-utils",
    "dotenv": "python-dotenv",
}
"""Distributions of the imports the AIND capsule template has, added to a capsule project's dependencies."""
_EXAMPLE_VALUES: dict[Any, Any] = {str: "example", int: 0, float: 0.0, bool: False}


class ScaffoldError(AnalysisWrapperError, ValueError):
    """A project that cannot be written: a bad name, a folder in use, a file that is not a capsule."""


@dataclass(frozen=True)
class Capsule:
    """What a capsule module gives a project: its text, its analysis name, dependencies and example
    parameters for the generated test."""

    source: str
    analysis_name: str
    dependencies: list[str]
    parameters: dict[str, Any] | None


def check_name(name: str, what: str = "project name") -> str:
    """``name`` if it can name an analysis, a Python package and a distribution, else a ScaffoldError."""
    if not NAME_PATTERN.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(
            f"{what} {name!r} must be a lowercase Python identifier ({NAME_PATTERN.pattern}, not a "
            "keyword), e.g. spike_rate: it names the package, the analysis and its Dagster assets"
        )
    return name


def check_directory(directory: Path) -> Path:
    """``directory`` if it does not exist or is an empty folder (nothing of a team's is overwritten)."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        what = "is not a folder" if not directory.is_dir() else "is not empty"
        raise ScaffoldError(f"{directory} {what}: `analysis-wrapper new` writes into a new or empty folder")
    return directory


def read_capsule(path: Path, name: str) -> Capsule:
    """Check that ``path`` has the capsule template's shape and read what the project needs from it."""
    try:
        source = path.read_text()
        tree = ast.parse(source, filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError) as exc:
        raise ScaffoldError(f"capsule module {path} cannot be read: {exc}") from None
    names: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update({t.id: node.value for t in node.targets if isinstance(t, ast.Name)})
    missing = [n for n in (RUN_FUNCTION_NAME, OUTPUT_MODEL_NAME) if n not in names]
    if not any(n in names for n in SPECIFICATION_NAMES):
        missing.append(" or ".join(SPECIFICATION_NAMES))
    if missing:
        raise ScaffoldError(
            f"{path} is not a capsule module: it has no module-level {', '.join(missing)} (the AIND "
            "capsule template's run_capsule.py has them)"
        )
    declared = names.get("ANALYSIS_NAME")
    analysis_name = name
    if isinstance(declared, ast.Constant) and isinstance(declared.value, str):
        analysis_name = check_name(declared.value, f"{path.name}'s ANALYSIS_NAME")
    roots = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    roots |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    dependencies = sorted(CAPSULE_DEPENDENCIES[r] for r in roots if r in CAPSULE_DEPENDENCIES)
    return Capsule(source, analysis_name, dependencies, _example_parameters(path))


def _example_parameters(path: Path) -> dict[str, Any] | None:
    """Values for the required fields of the capsule's parameter model, guessed from their types, so
    the generated test has a job its model accepts; None when the module cannot be imported here.
    The module is imported (its ``__main__`` part does not run), as a code location would import it."""
    module_name = f"_analysis_wrapper_capsule_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:  # its dependencies may be missing here: the test's parameters are then left to fill in
        return None
    finally:
        sys.modules.pop(module_name, None)
    model = next((getattr(module, n) for n in SPECIFICATION_NAMES if hasattr(module, n)), None)
    fields = getattr(model, "model_fields", None) or {}
    return {
        field: _example(info.annotation)
        for field, info in fields.items()
        if info.is_required() and field != "analysis_name"
    }


def _example(annotation: Any) -> Any:
    """A placeholder value of ``annotation``'s type (None where no simple one exists)."""
    if annotation in _EXAMPLE_VALUES:
        return _EXAMPLE_VALUES[annotation]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return None if type(None) in args else _example(args[0])
    if origin is dict:
        return {}
    return [] if origin in (list, set, tuple) else None


@dataclass(frozen=True)
class Project:
    """A project written: its folder, the analysis name its entry point declares, its files."""

    directory: Path
    analysis_name: str
    files: list[Path]


def write_project(name: str, directory: Path, capsule_file: Path | None = None) -> Project:
    """Write the project ``name`` into ``directory`` (new or empty)."""
    check_name(name)
    check_directory(directory)
    capsule = read_capsule(capsule_file, name) if capsule_file is not None else None
    module = name if capsule else "analysis"
    values = {
        "name": name,
        "dist": name.replace("_", "-"),
        "package": name,
        "module": module,
        "analysis_name": capsule.analysis_name if capsule else name,
        "dependencies": "".join(f'\n    "{d}",' for d in capsule.dependencies) if capsule else "",
        "module_note": " (the capsule's module, unchanged)" if capsule else "",
        "parameters": _parameters_text(capsule),
    }
    package = Path("src") / name
    layout: dict[Path, str] = {
        Path("pyproject.toml"): "pyproject.toml",
        Path("README.md"): "README.md",
        Path("workspace.yaml"): "workspace.yaml",
        Path(".gitignore"): "gitignore",
        package / "__init__.py": "package_init.py",
        package / "definitions.py": "definitions_capsule.py" if capsule else "definitions.py",
        Path("tests") / f"test_{module}.py": "test_capsule.py" if capsule else "test_analysis.py",
    }
    if not capsule:
        layout[package / "analysis.py"] = "analysis.py"
    templates = files(__package__) / "templates"
    written, existed = [], directory.exists()
    try:
        for target, template in layout.items():
            text = Template(templates.joinpath(f"{template}.tmpl").read_text()).substitute(values)
            written.append(_write(directory / target, text))
        if capsule:
            written.append(_write(directory / package / f"{module}.py", capsule.source))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # no half-written project left to trip over
        if existed:
            directory.mkdir()
        raise
    return Project(directory, values["analysis_name"], written)


def _parameters_text(capsule: Capsule | None) -> str:
    if capsule is None or capsule.parameters is None:
        return "{}  # the capsule module could not be imported when the project was written: fill them in"
    return pprint.pformat(capsule.parameters, width=90, sort_dicts=False)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
