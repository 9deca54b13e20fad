"""What one partition of a run came to (:class:`PartitionOutcome`), and the Dagster events that report
it: a materialization for a new recorded result, an observation for anything else (a skip, a dry run, a
failure), and the checks of the result it shows. The commit service makes outcomes; the asset and the
batch job turn them into events here, so both report a partition the same way."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    Failure,
    MetadataValue,
)

from analysis_wrapper.checks import CheckOutcome
from analysis_wrapper.errors import one_line
from analysis_wrapper.tags import CODE_VERSION_TAG, DATA_VERSION_TAG


def failure_text(exc: Exception) -> str:
    return str(exc.description) if isinstance(exc, Failure) else f"{type(exc).__name__}: {exc}"


def failure_metadata(exc: Exception, run_id: str) -> dict[str, Any]:
    """What a failed partition's observation says: the reason and the run whose log has the rest."""
    message = failure_text(exc)
    return {
        "status": f"failed: {one_line(message) if message else type(exc).__name__}",
        "reason": MetadataValue.md(f"```\n{message}\n```") if "\n" in message else message,
        "run_id": run_id,
    }


@dataclass(frozen=True)
class PartitionOutcome:
    """What one partition came to. ``materialized``: a new recorded result (a materialization, with
    its ``checks``); anything else (a skip, a dry run, a failure: ``error``) is an observation, so the
    partition keeps showing its recorded result; a skip carries that result's ``checks``."""

    key: str
    metadata: dict[str, Any]
    fingerprint: str | None = None
    materialized: bool = False
    checks: tuple[CheckOutcome, ...] = ()
    error: Exception | None = None
    on_record: bool = False
    """A skip of a result in this project's record store (not the capsule's, not one being computed)."""

    @property
    def status(self) -> str:
        return str(self.metadata.get("status") or "done")

    @property
    def skipped(self) -> bool:
        return self.status.startswith("skipped")

    @property
    def kind(self) -> str:
        """``recorded``, ``skipped``, ``dry run`` or ``failed``."""
        if self.materialized:
            return "recorded"
        return "failed" if self.error is not None else self.status.split(":", 1)[0]

    def reported(self, asset_key: AssetKey, instance: DagsterInstance) -> PartitionOutcome:
        """This outcome, or, for a skip of a result that Dagster was never told of, its
        materialization, reported now. A run killed between writing its record and reporting its
        materialization leaves a recorded job whose partition shows no result, and that the summary
        (which reads materializations) never lists; the run that finds it recorded reports it, unless
        the run that recorded it is still going (it reports it itself)."""
        if not (self.on_record and self.fingerprint):
            return self
        latest = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=asset_key, asset_partitions=[self.key]), limit=1
        ).records
        shown = latest[0].asset_materialization if latest else None
        if shown is not None and (shown.tags or {}).get(DATA_VERSION_TAG) == self.fingerprint:
            return self
        recorder = str(self.metadata.get("recorded_by_run") or "")
        run = instance.get_run_by_id(recorder) if recorder else None
        if run is not None and not run.is_finished:
            return self
        status = f"recorded by run {recorder or 'unknown'}, reported by this run (that run ended first)"
        return dataclasses.replace(self, metadata={**self.metadata, "status": status}, materialized=True)

    def events(
        self, asset_key: AssetKey, code_version: str, instance: DagsterInstance
    ) -> Iterator[AssetMaterialization | AssetObservation | AssetCheckEvaluation]:
        """The outcome as the events an op reports for one partition of ``asset_key`` (its checks
        after its materialization is stored: they aim at it)."""
        if self.materialized:
            tags = {DATA_VERSION_TAG: str(self.fingerprint), CODE_VERSION_TAG: code_version}
            yield AssetMaterialization(
                asset_key=asset_key, partition=self.key, metadata=self.metadata, tags=tags
            )
        else:
            yield AssetObservation(asset_key=asset_key, partition=self.key, metadata=self.metadata)
        for checked in self.checks:
            yield checked.evaluation(asset_key, self.key, instance)
