"""A capsule module served as it is: the AIND analysis-wrapper template's ``run_capsule.py`` shape.

A team switching from the capsule brings a module with a module-level ``AnalysisSpecification`` (the
template's alias ``AnalysisInputModel`` is accepted too), ``AnalysisOutputModel`` and
``run_analysis(analysis_dispatch_inputs, analysis_specification) -> dict | None``; its
``run_analysis_jobs(...)`` call under ``__main__`` never runs here. :func:`capsule_analysis` makes an
:class:`~analysis_wrapper.analysis.Analysis` of it, so it is served like any other analysis:

* name: module-level ``ANALYSIS_NAME``, else the module's last name part (``teams.run_capsule`` ->
  ``run_capsule``); declared version: ``ANALYSIS_VERSION``, else ``CAPSULE_CODE_VERSION``, else ``"0"``;
* ``run_analysis`` receives the job as AIND's own ``AnalysisDispatchModel`` (analysis-pipeline-utils's
  class when it is installed, else our :class:`~analysis_wrapper.job_file.DispatchJob`, the same JSON)
  whose locations the job reads are their local copies, and the validated specification;
* during the call the working directory is the job's results folder, so ``/results/x`` becomes ``x``
  (the one change to make). The working directory belongs to the process, so calls are serialised by
  a lock and the previous directory is restored;
* the dict returned is validated by ``AnalysisOutputModel`` and recorded as the outputs; ``None`` records
  no outputs (``{}``);
* ``CAPSULE_CODE_URL`` / ``CAPSULE_CODE_VERSION`` name the capsule it replaces, so the capsule's records
  count as done (:mod:`analysis_wrapper.capsule_records`).
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, model_validator

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.errors import AnalysisWrapperError

if TYPE_CHECKING:
    from analysis_wrapper.job_file import AnalysisJob

SPECIFICATION_NAMES = ("AnalysisSpecification", "AnalysisInputModel")
OUTPUT_MODEL_NAME = "AnalysisOutputModel"
RUN_FUNCTION_NAME = "run_analysis"
DEFAULT_VERSION = "0"
_OUTPUTS_ATTRIBUTE = "AnalysisWrapperOutputs"
_ANALYSIS_ATTRIBUTE = "_analysis_wrapper_analysis"

_working_directory_lock = threading.Lock()


class CapsuleModuleError(AnalysisWrapperError, TypeError):
    """A module that looks like a capsule module but cannot be served; the message says what is wrong."""


def _specification(module: ModuleType) -> Any:
    return next((getattr(module, n) for n in SPECIFICATION_NAMES if hasattr(module, n)), None)


def is_capsule_module(module: ModuleType) -> bool:
    """Whether ``module`` has the template's shape: a specification model, ``AnalysisOutputModel`` and
    ``run_analysis``."""
    return (
        _specification(module) is not None
        and hasattr(module, OUTPUT_MODEL_NAME)
        and callable(getattr(module, RUN_FUNCTION_NAME, None))
    )


def _model(module: ModuleType, value: Any, what: str) -> type[BaseModel]:
    if not (isinstance(value, type) and issubclass(value, BaseModel)):
        raise CapsuleModuleError(f"{module.__name__}.{what} must be a pydantic model, got {value!r}")
    return value


def _outputs_model(module: ModuleType, outputs: type[BaseModel]) -> type[BaseModel]:
    """``AnalysisOutputModel`` that also takes ``None`` (or ``{}``): no outputs, recorded as ``{}``.

    It is set on the module so ``module:AnalysisWrapperOutputs`` names it, as every ``Outputs`` is named."""

    class Outputs(outputs):  # type: ignore[valid-type,misc]
        @model_validator(mode="wrap")
        @classmethod
        def _nothing(cls, data: Any, handler: Any) -> Any:
            if data is None or (isinstance(data, dict) and not data):
                empty = cls.model_construct()
                object.__setattr__(empty, "__dict__", {})
                return empty
            return handler(data)

    Outputs.__name__ = Outputs.__qualname__ = _OUTPUTS_ATTRIBUTE
    Outputs.__module__ = module.__name__
    Outputs.__doc__ = outputs.__doc__
    setattr(module, _OUTPUTS_ATTRIBUTE, Outputs)
    return Outputs


def dispatch_model(job: AnalysisJob) -> BaseModel:
    """The job as AIND's ``AnalysisDispatchModel``, the locations it reads replaced by their local copies."""
    data = job.dispatch.model_dump(mode="json", exclude_none=True)
    if job.input_paths:
        read = "file_location" if job.dispatch.file_location else "s3_location"
        data[read] = [str(path) for path in job.input_paths]
    try:
        from analysis_pipeline_utils.analysis_dispatch_model import AnalysisDispatchModel
    except ImportError:
        from analysis_wrapper.job_file import DispatchJob

        return DispatchJob.model_validate(data)
    return AnalysisDispatchModel.model_validate(data)


def _run_function(module: ModuleType, outputs: type[BaseModel]) -> Any:
    run_analysis = getattr(module, RUN_FUNCTION_NAME)

    def run(job: AnalysisJob, params: BaseModel, results_dir: Path, logger: logging.Logger) -> BaseModel:
        inputs = dispatch_model(job)
        with _working_directory_lock:
            previous = os.getcwd()
            os.chdir(results_dir)
            try:
                returned = run_analysis(inputs, params)
            finally:
                os.chdir(previous)
        if returned is not None and not isinstance(returned, dict | BaseModel):
            raise CapsuleModuleError(
                f"{module.__name__}.run_analysis returned {type(returned).__name__}: want a dict or None"
            )
        return outputs.model_validate(returned)

    run.__module__ = module.__name__
    run.__qualname__ = RUN_FUNCTION_NAME
    return run


def capsule_analysis(module: ModuleType) -> Analysis[Any, Any]:
    """The :class:`Analysis` serving a capsule module (see the module docstring for the rules): one per
    module, so finding the module twice (an entry point and ``ANALYSIS_MODULES``) finds one analysis."""
    made = getattr(module, _ANALYSIS_ATTRIBUTE, None)
    if isinstance(made, Analysis):
        return made
    made = _make_analysis(module)
    setattr(module, _ANALYSIS_ATTRIBUTE, made)
    return made


def _make_analysis(module: ModuleType) -> Analysis[Any, Any]:
    if not is_capsule_module(module):
        raise CapsuleModuleError(
            f"{module.__name__} is not a capsule module: it needs AnalysisSpecification (or "
            "AnalysisInputModel), AnalysisOutputModel and run_analysis at module level"
        )
    params = _model(module, _specification(module), "AnalysisSpecification")
    outputs = _outputs_model(module, _model(module, getattr(module, OUTPUT_MODEL_NAME), OUTPUT_MODEL_NAME))
    code_url = getattr(module, "CAPSULE_CODE_URL", None)
    code_version = getattr(module, "CAPSULE_CODE_VERSION", None)
    version = getattr(module, "ANALYSIS_VERSION", None) or code_version or DEFAULT_VERSION
    name = getattr(module, "ANALYSIS_NAME", None) or module.__name__.rpartition(".")[2]
    try:
        return Analysis(
            name=str(name),
            version=str(version),
            params=params,
            outputs=outputs,
            run=_run_function(module, outputs),
            description=(inspect.getdoc(module) or "").split("\n\n")[0],
            capsule_code_url=str(code_url) if code_url else None,
            capsule_code_version=str(code_version) if code_version else None,
        )
    except ValueError as exc:
        raise CapsuleModuleError(f"{module.__name__}: {exc} (set ANALYSIS_NAME / ANALYSIS_VERSION)") from None
