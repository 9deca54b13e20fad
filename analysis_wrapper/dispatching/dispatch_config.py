"""The dispatcher's settings, with its names: one model for the CLI, saved queries and the Launchpad.

:class:`DispatchSettings` is a Dagster ``Config`` (a pydantic model), so ``<analysis>_dispatch_job``
shows exactly these fields as a typed form, and the CLI and saved-query YAML files validate through
the same model. Names and defaults are those of AIND's ``aind-analysis-job-dispatch``
(``code/run_capsule.py`` ``InputSettings`` and ``analysis_pipeline_utils.utils_analysis_dispatch``);
where the capsule reads a file from its ``/data`` folder, the setting here is that file's path.
"""

from __future__ import annotations

from typing import Any

from dagster import Config
from pydantic import Field, field_validator, model_validator

from analysis_wrapper.errors import AnalysisWrapperError

DEFAULT_MAX_TASKS = 1000


class DispatchSettingsError(AnalysisWrapperError, ValueError):
    """Settings that cannot work together; the message names the settings and what to change."""


def _as_list(value: Any) -> Any:
    """``"subject.subject_id"`` or ``"a, b"`` (the capsule's app panel takes one text) -> a list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class DispatchSettings(Config):  # type: ignore[misc]
    """What to dispatch: which assets (a query or a CSV of asset ids), how they become jobs, how many."""

    docdb_query: str = Field(
        default="",
        description="MongoDB filter for the metadata collection: JSON text, or the path of a JSON file",
    )
    data_asset_csv: str = Field(
        default="",
        description="Instead of a query: a CSV file with an 'asset_id' column (Code Ocean data asset ids, "
        "matched against external_links.Code Ocean.0)",
    )
    file_extension: str = Field(
        default="",
        description="Look for files ending in this under each asset (recursively); assets without one "
        "are skipped. Empty: a job gets the asset's location",
    )
    split_files: int = Field(
        default=1,
        ge=0,
        description="With file_extension: N = one job per N files of an asset (1: a job per file), "
        "0 = one job per asset (or group) holding all its files",
    )
    tasks_per_job: int = Field(
        default=1, ge=1, description="When writing job files: how many go into each numbered folder"
    )
    max_number_of_tasks_dispatched: int = Field(
        default=DEFAULT_MAX_TASKS,
        ge=0,
        description="Most new jobs one dispatch registers; the rest are reported",
    )
    group_by: list[str] = Field(
        default_factory=list,
        description="Record fields (e.g. subject.subject_id): one job per group holding all its assets",
    )
    filter_latest: str = Field(
        default="",
        description="Record field to sort by (e.g. created): keep only the newest record per filter_by group",
    )
    filter_by: list[str] = Field(
        default_factory=list, description="Fields defining the groups filter_latest keeps one record of"
    )
    unwind_list_fields: list[str] = Field(
        default_factory=list, description="List fields to flatten (one record per element) before grouping"
    )
    drop_null_groups: bool = Field(
        default=True, description="Leave out records whose group_by / filter_by fields are null or missing"
    )
    distributed_parameters: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Parameter sets: every job is dispatched once with each (N jobs x M sets)",
    )
    parameters_file: str = Field(
        default="",
        description="analysis_parameters.json: a JSON list of parameter sets, or an object with "
        "'distributed_parameters' (and optionally 'fixed_parameters')",
    )
    fixed_parameters: dict[str, Any] = Field(
        default_factory=dict, description="Parameters every job gets (analysis_code.parameters)"
    )
    output_directory: str = Field(
        default="",
        description="Also write the jobs as files here (a folder or an s3:// prefix, e.g. the inbox), "
        "named as the dispatcher names them: <job index>/<uuid>.json",
    )
    dry_run: bool = Field(
        default=False, description="Find and report only: register nothing, write nothing, record nothing"
    )

    @field_validator("group_by", "filter_by", "unwind_list_fields", mode="before")
    @classmethod
    def _text_as_list(cls, value: Any) -> Any:
        return _as_list(value)

    @model_validator(mode="after")
    def _consistent(self) -> DispatchSettings:
        check_settings(self)
        return self


def check_settings(settings: DispatchSettings) -> None:
    """Refuse combinations the dispatcher refuses (or that cannot mean anything), before any query."""
    if bool(settings.docdb_query.strip()) == bool(settings.data_asset_csv.strip()):
        raise DispatchSettingsError(
            "give exactly one of docdb_query (a MongoDB filter, JSON text or file) and data_asset_csv "
            "(a CSV file with an asset_id column)"
        )
    if settings.filter_latest and not settings.filter_by:
        raise DispatchSettingsError(
            "filter_latest needs filter_by: the fields whose groups keep only their newest record"
        )
    if settings.file_extension and settings.split_files and settings.group_by:
        raise DispatchSettingsError(
            f"split_files={settings.split_files} splits an asset's files into separate jobs, which cannot "
            f"be done for groups (group_by {', '.join(settings.group_by)}): set split_files to 0 to get "
            "one job per group holding every matching file (the AIND dispatcher refuses this too: "
            "'split_files not supported when processing grouped data assets')"
        )
    for name in ("group_by", "filter_by", "unwind_list_fields"):
        for field in getattr(settings, name):
            if field.startswith("$") or not field:
                raise DispatchSettingsError(f"{name}: {field!r} is not a record field name")
    if settings.filter_latest.startswith("$"):
        raise DispatchSettingsError(f"filter_latest: {settings.filter_latest!r} is not a record field name")
