"""The `Analysis` spec: the one thing a scientist writes to plug an analysis in.

An analysis is a name, a declared version, a pydantic ``Params`` model (its parameters), a pydantic
``Outputs`` model (small numerical results that go into the provenance record) and a run function.
Everything Dagster needs (partitions, typed config, asset, job, sensor) is generated from it by
:mod:`analysis_wrapper.factory`; the run function never sees Dagster.

The run function receives:

* ``job``: the :class:`~analysis_wrapper.job_file.AnalysisJob` being run; ``job.input_paths`` are
  local paths to the job's inputs (remote inputs are fetched before the function is called);
* ``params``: the validated ``Params`` instance (merged from the job, run config and
  ``distributed_parameters``);
* ``results_dir``: an empty folder for large result files (CSV, figures, arrays);
* ``logger``: a :class:`logging.Logger` that reaches the Dagster run log.

It returns an ``Outputs`` instance. Raising any exception fails the job; nothing is recorded.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    import pandas as pd

    from analysis_wrapper.job_file import AnalysisJob

P = TypeVar("P", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)

RunFunction = Callable[["AnalysisJob", P, Path, logging.Logger], OutT]
SummaryRows = Callable[[dict[str, Any], Callable[[str], bytes]], list[dict[str, Any]]]
"""``(record, read) -> rows``: one job's own summary rows; ``read(name)``: a file of its result folder."""
SummaryFigure = Callable[["pd.DataFrame", "pd.DataFrame | None", Path], None]
"""``(jobs, rows, path)``: draw the figure across jobs into the PNG ``path``, from the summary's job table
and the rows of :data:`SummaryRows` (None without them); each row carries ``analysis_version`` and
``parameter_set``, which the figure keeps apart or labels (:mod:`analysis_wrapper.summary.figures`)."""

_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,47}$")


@dataclass(frozen=True)
class Analysis(Generic[P, OutT]):
    """Declarative description of one analysis.

    ``name`` becomes part of Dagster names (``<name>_result`` asset, ``<name>_job``,
    ``<name>_batch_job``, ``<name>_partitions``), so it must be a lowercase Python-style identifier.
    ``version`` is the analysis's declared code version: it enters the fingerprint, so bumping it
    makes every job of this analysis due again, while a new git commit alone does not.
    ``figure`` names a PNG the run function writes into ``results_dir``; the UI shows it.
    """

    name: str
    version: str
    params: type[P]
    outputs: type[OutT]
    run: RunFunction[P, OutT]
    description: str = ""
    figure: str | None = None
    #: The capsule this analysis replaces (its ``processing.data_processes[0].code`` url and version):
    #: a job the capsule already recorded counts as done (:mod:`analysis_wrapper.capsule_records`).
    capsule_code_url: str | None = None
    capsule_code_version: str | None = None
    #: The analysis's own part of ``<name>_summary`` (:mod:`analysis_wrapper.summary`): rows of one job
    #: beyond its record's (e.g. one per unit), read from its result folder once, when it is new to the
    #: summary; and the figure across jobs (default: histograms of the numeric outputs).
    summary_rows: SummaryRows | None = None
    summary_figure: SummaryFigure | None = None

    def __post_init__(self) -> None:
        if not _NAME_PATTERN.match(self.name):
            raise ValueError(
                f"Analysis name {self.name!r} must match {_NAME_PATTERN.pattern} "
                "(it is used in Dagster asset, job and partition names)"
            )
        if not self.version or not self.version.strip():
            raise ValueError(f"Analysis {self.name!r} needs a non-empty declared version")

    @property
    def asset_name(self) -> str:
        return f"{self.name}_result"

    @property
    def job_name(self) -> str:
        return f"{self.name}_job"

    @property
    def batch_job_name(self) -> str:
        return f"{self.name}_batch_job"

    @property
    def partitions_name(self) -> str:
        return f"{self.name}_partitions"

    @property
    def sensor_name(self) -> str:
        return f"{self.name}_inbox_sensor"

    def validate_params(self, merged: dict[str, Any]) -> P:
        """Validate merged parameters with the analysis's ``Params`` model."""
        return self.params.model_validate(merged)
