"""The results IO manager: stores each partition's result folder, then commits its record.

One IO manager whatever the storage (local folder here; S3 is a second :class:`ResultsStorage`
behind the same IO manager). ``handle_output`` is the commit point of a job:

1. the run must still hold the fingerprint's claim (:mod:`analysis_wrapper.ownership`): only the
   claimant writes the fingerprint's folder;
2. result files, ``outputs.json`` and ``metadata.nd.json`` go to ``<root>/<fingerprint>/``;
3. the claim is checked once more, then the record goes to the record store: a record exists only
   for a complete folder, and holds the run id that the folder's ``metadata.nd.json`` holds;
4. the job is ``recorded`` (:mod:`analysis_wrapper.lifecycle`) and the claim released.

A dry run writes the folder under the dry-run area and posts nothing. ``load_input`` returns the
analysis's ``Outputs`` read back from the stored ``outputs.json``.
"""

import datetime as dt
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dagster import (
    AssetRecordsFilter,
    ConfigurableIOManager,
    InputContext,
    OutputContext,
)
from pydantic import BaseModel

from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.job_file import AnalysisJob
from analysis_wrapper.ownership import Claim, release
from analysis_wrapper.resources.record_store import StoreResource
from analysis_wrapper.resources.results_resources import ResultsStorageResource
from analysis_wrapper.resources.results_storage import OUTPUTS_FILE, ResultsStorage
from analysis_wrapper.result_metadata import location_link, record_metadata
from analysis_wrapper.scratch import remove_scratch
from analysis_wrapper.store.base import RecordExistsError, StoreError

LOCATION_METADATA_KEY = "results_location"


class ClaimLostError(AnalysisWrapperError, RuntimeError):
    """This run's claim on the fingerprint expired and another run took it over: it must not write."""


@dataclass
class AnalysisResult:
    """What the result asset hands to the IO manager for one partition.

    ``skipped`` says why nothing ran (already recorded, being computed by another run); ``scratch``
    is the folder the analysis wrote into (removed once stored); ``record`` lacks ``location`` until
    stored; ``claim`` is the run's claim on the fingerprint, released once stored.
    """

    job: AnalysisJob
    outputs: BaseModel
    dry_run: bool
    force: bool = False
    skipped: str | None = None
    scratch: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)
    claim: Claim | None = None


class ResultsIOManager(ConfigurableIOManager):  # type: ignore[misc]
    """Writes result folders to ``results`` (picked in ``definitions.py``), commits records to ``store``."""

    store: StoreResource
    results: ResultsStorageResource

    # ---- output -----------------------------------------------------------------------------
    def handle_output(self, context: OutputContext, obj: AnalysisResult) -> None:
        context.add_output_metadata(self.store_result(obj, context.run_id, context.log))

    def store_result(self, obj: AnalysisResult, run_id: str, log: Any) -> dict[str, Any]:
        """Store ``obj`` (the commit point of its job) and return the materialization metadata.

        The asset's outputs come here through :meth:`handle_output`; batch runs call it directly,
        one partition after another. A failure marks the job failed and is re-raised.
        """
        job = obj.job
        try:
            if obj.skipped:
                # Reported as an observation, never as a materialization: the partition keeps showing
                # its recorded result. What the observation shows is read from the record.
                existing = self.store.get_store().get_record(job.analysis, job.fingerprint) or {}
                return {
                    **(record_metadata(existing) if existing else {}),
                    LOCATION_METADATA_KEY: existing.get("location", ""),
                    "status": f"skipped: {obj.skipped}",
                }
            if obj.dry_run:
                return self._write_dry_run(obj, run_id, log)
            return self._commit(obj, run_id, log)
        except ClaimLostError as exc:
            log.warning(str(exc))
            return {LOCATION_METADATA_KEY: "", "status": "skipped: claim lost to another run"}
        except Exception as exc:
            try:
                self.store.lifecycle().failed(
                    job.analysis, job.partition_key, run_id, f"storing results failed: {exc}"
                )
            except StoreError:
                log.warning(f"cannot mark {job.partition_key} failed in the job registry (store unreachable)")
            raise
        finally:
            if obj.claim is not None:
                release(obj.claim)
            if obj.scratch is not None:
                remove_scratch(obj.scratch)

    def _check_claim(self, obj: AnalysisResult) -> None:
        """Make sure the run still holds its claim for the next write (half a lease's life, renewed
        now if less is left); refuse to write when another run took it over."""
        if obj.claim is not None and not obj.claim.held_for(self.store.lease_ttl_s / 2):
            raise ClaimLostError(
                f"{obj.job.fingerprint}: this run's claim expired and another run took it over; this "
                "run's result is discarded (that run records it). Raise LEASE_TTL_S if runs stall this long."
            )

    def _write_dry_run(self, obj: AnalysisResult, run_id: str, log: Any) -> dict[str, Any]:
        storage = self.results.dry_runs()
        record = {**obj.record, "location": storage.uri(obj.job.fingerprint)}
        assert obj.scratch is not None
        storage.put_result(obj.job.fingerprint, obj.scratch, obj.outputs.model_dump(mode="json"), record)
        self.store.lifecycle().dry_ran(obj.job.analysis, obj.job.partition_key, run_id)
        log.info(
            f"DRY RUN: results written to {record['location']}; nothing posted to the results root or the "
            "record store. Set DRY_RUN=0 (or dry_run: false in run config) to post."
        )
        return {
            LOCATION_METADATA_KEY: record["location"],
            "results_link": location_link(record["location"]),
            "status": "dry run: not posted (a dry run is no result: an observation, not a materialization)",
        }

    def _commit(self, obj: AnalysisResult, run_id: str, log: Any) -> dict[str, Any]:
        store = self.store.get_store()
        lifecycle = self.store.lifecycle()
        storage = self.results.results()
        job = obj.job
        self._check_claim(obj)
        existing = store.get_record(job.analysis, job.fingerprint)
        if existing is not None and not obj.force:
            # Recorded by a run that held the claim before this one (its commit ended before ours began).
            log.warning(
                f"{job.fingerprint} was recorded by run {existing.get('analysis_wrapper', {}).get('run_id')} "
                "while this run computed; keeping that record, discarding this result."
            )
            lifecycle.found_recorded(job.analysis, job.partition_key, job.fingerprint, run_id)
            return {
                LOCATION_METADATA_KEY: existing.get("location", ""),
                "status": "skipped: recorded meanwhile",
            }
        record = {**obj.record, "location": storage.uri(job.fingerprint)}
        if existing is not None:
            self._supersede(storage, existing, record, log)
        assert obj.scratch is not None
        stored = storage.put_result(job.fingerprint, obj.scratch, obj.outputs.model_dump(mode="json"), record)
        self._check_claim(obj)
        try:
            store.insert_record(job.analysis, record)
        except RecordExistsError:
            # Only the claimant writes this fingerprint, so this is a record we did not expect: keep it.
            log.warning(f"{job.fingerprint} was recorded concurrently; keeping the first record.")
            lifecycle.found_recorded(job.analysis, job.partition_key, job.fingerprint, run_id)
            return {LOCATION_METADATA_KEY: record["location"], "status": "skipped: recorded concurrently"}
        lifecycle.recorded(job.analysis, job.partition_key, run_id)
        log.info(
            f"Stored {len(stored)} files in {record['location']} and recorded fingerprint {job.fingerprint}."
        )
        return {
            LOCATION_METADATA_KEY: record["location"],
            "results_link": location_link(record["location"]),
            "status": "recorded",
            "stored_files": len(stored),
        }

    def _supersede(self, storage: ResultsStorage, old: dict[str, Any], new: dict[str, Any], log: Any) -> None:
        """Under ``force``: keep the old folder and record, renamed, with a link to the successor."""
        fp = new["_id"]
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        suffix = f".superseded-{stamp}"
        old_location = storage.move_aside(fp, suffix)
        kept = json.loads(json.dumps(old, default=str))
        kept["_id"] = f"{fp}{suffix}"
        kept["location"] = old_location or old.get("location")
        kept.setdefault("analysis_wrapper", {})["superseded_by"] = fp
        self.store.get_store().supersede_record(new["analysis_wrapper"]["analysis"], fp, kept)
        log.info(f"force: previous record of {fp} kept as {kept['_id']} (location {kept['location']}).")

    # ---- input ------------------------------------------------------------------------------
    def load_input(self, context: InputContext) -> BaseModel:
        upstream = context.upstream_output
        assert upstream is not None and upstream.asset_key is not None
        partition = context.asset_partition_key
        records = context.instance.fetch_materializations(
            AssetRecordsFilter(asset_key=upstream.asset_key, asset_partitions=[partition]), limit=1
        ).records
        if not records:
            raise FileNotFoundError(
                f"{upstream.asset_key.to_user_string()} partition {partition} is not materialized"
            )
        materialization = records[0].asset_materialization
        assert materialization is not None
        location = self._input_location(upstream.definition_metadata, materialization.metadata)
        storage, name = self.results.at_location(location)
        data = json.loads(storage.read_bytes(name, OUTPUTS_FILE))
        return outputs_model(upstream.definition_metadata).model_validate(data)

    def _input_location(self, definition_metadata: Any, metadata: Any) -> str:
        """The folder of the partition whose latest materialization has ``metadata``: its own
        location, unless that run skipped the partition. Then the record's, by fingerprint: a run
        that skipped because another run was computing the fingerprint has no location (and its
        materialization may well be stored after that run's own, which names the folder)."""

        def value(entry: Any) -> str:
            return str(getattr(entry, "value", entry) or "")

        status = value(metadata.get("status"))
        if not status.startswith("skipped"):
            return value(metadata[LOCATION_METADATA_KEY])
        analysis = value((definition_metadata or {}).get("analysis"))
        fingerprint = value(metadata.get("fingerprint"))
        record = (
            self.store.get_store().get_record(analysis, fingerprint) if analysis and fingerprint else None
        )
        if record is None:
            raise FileNotFoundError(
                f"fingerprint {fingerprint or '?'} of {analysis or 'this analysis'} is not recorded: the "
                f"partition's latest materialization was {status!r}"
            )
        return str(record["location"])


OUTPUTS_MODEL_METADATA_KEY = "outputs_model"


def outputs_model(definition_metadata: Any) -> type[BaseModel]:
    """The ``Outputs`` class named in the asset's definition metadata (``module:Class``)."""
    entry = (definition_metadata or {}).get(OUTPUTS_MODEL_METADATA_KEY)
    text = str(getattr(entry, "value", entry) or "")
    module_name, _, class_name = text.partition(":")
    if not module_name or not class_name:
        raise TypeError(f"asset metadata {OUTPUTS_MODEL_METADATA_KEY!r} must be 'module:Class', got {text!r}")
    model = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{text} is not a pydantic model")
    return model
