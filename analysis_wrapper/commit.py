"""The one commit path of a partition, whoever runs it: the result asset, a batch run, a loop over keys.

:meth:`CommitService.run_partition` takes one partition key and returns one
:class:`~analysis_wrapper.partition_outcome.PartitionOutcome`
(materialization metadata, or what a skip, a dry run or a failure is observed as); a failing partition
never raises out of it, so a loop over keys goes on with the next one. Its steps, in order:

1. the job from the registry (:mod:`analysis_wrapper.partition_run`), skipped when its fingerprint is
   recorded (unless ``force``) or refused on a dirty tree;
2. ``with claimed(...)`` (:mod:`analysis_wrapper.ownership`): only one run computes a fingerprint; a
   run that finds it held skips; the record is looked up once more under the claim;
3. STARTED (:mod:`analysis_wrapper.lifecycle`), then the analysis ``with scratch_folder(...)``;
4. the commit: the claim re-checked, result files, ``outputs.json``, ``metadata.nd.json`` to
   ``<root>/<fingerprint>/``, the claim re-checked (:class:`ClaimLostError`), then the record (a record
   exists only for a complete folder; under ``force`` the old one is superseded), then RECORDED. A dry
   run writes the folder under the dry-run area, posts nothing, and is DRY_RAN;
5. the asset checks of what was recorded (:mod:`analysis_wrapper.checks`).

Claim and scratch folder are released where their ``with`` ends, whatever happened. Failures are
marked through the lifecycle. The service gets the resources' clients; the resources hold no logic.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import (
    Failure,
    MetadataValue,
)
from pydantic import ValidationError

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.capsule_records import recorded_jobs
from analysis_wrapper.checks import CheckOutcome, evaluate_checks
from analysis_wrapper.config import overrides_from_config
from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.inputs import InputNotFoundError
from analysis_wrapper.job_file import AnalysisJob, JobFileError
from analysis_wrapper.lifecycle import JobLifecycle
from analysis_wrapper.ownership import Claim, Held, claimed, fingerprint_key
from analysis_wrapper.partition_outcome import PartitionOutcome, failure_metadata, failure_text
from analysis_wrapper.partition_run import Computed, RunPlace, compute, job_of_entry, load_job, start
from analysis_wrapper.provenance import CodeState, DirtyTreeError, check_may_post
from analysis_wrapper.resources.results_resources import ResultsStorageResource
from analysis_wrapper.resources.results_storage import ResultsStorage
from analysis_wrapper.resources.runtime import AnalysisRuntime
from analysis_wrapper.result_metadata import LOCATION_METADATA_KEY as LOCATION
from analysis_wrapper.result_metadata import inputs_table, location_link, record_metadata
from analysis_wrapper.scratch import scratch_folder
from analysis_wrapper.store.base import RecordExistsError, Store, StoreError


class RunConfigRefused(Failure, AnalysisWrapperError):
    """Run-config overrides the analysis's ``Params`` refuse for a job of the run: the run stops before
    it writes anything (a Dagster ``Failure``: the run page shows the message, no stack trace)."""


class ClaimLostError(AnalysisWrapperError, RuntimeError):
    """This run's claim on the fingerprint expired and another run took it over: it must not write."""


@dataclass
class CommitService:
    """Runs and commits partitions of ``analysis`` for one Dagster run, with the clients of its
    resources: ``store`` (``StoreResource.get_store()``) and ``results`` (where folders go)."""

    analysis: Analysis[Any, Any]
    store: Store
    results: ResultsStorageResource
    runtime: AnalysisRuntime
    place: RunPlace
    lease_ttl_s: float
    code_state: Callable[[], CodeState] | None = None
    """Default ``runtime.code_state``; a run of several partitions asks git once (a cached one)."""
    counts_refusals: bool = False
    """True for a run of several partitions: it carries no attempt tag for the run-events sensor to
    count from, so a partition refused before it started (bad parameters, no git) is failed here."""

    @property
    def lifecycle(self) -> JobLifecycle:
        return JobLifecycle(self.store)

    @property
    def log(self) -> Any:
        return self.place.log

    def run_partition(self, key: str, config: Any) -> PartitionOutcome:
        """Run and commit partition ``key``; ``config`` is the analysis's ``Config`` (overrides,
        ``dry_run``, ``force``). Never raises an ``Exception``: a failure is the outcome's ``error``
        (a :class:`~dagster.Failure` for a job that cannot run, else the analysis's own exception),
        with the job marked failed."""
        try:
            outcome = self._run(key, config)
        except Exception as exc:
            if self.counts_refusals:
                self._count_refusal(key, exc)
            return PartitionOutcome(key, failure_metadata(exc, self.place.run_id), error=exc)
        if outcome.fingerprint and (outcome.materialized or outcome.skipped):
            # A skip defers to a recorded result: its checks say what state that result is in.
            checks = evaluate_checks(
                self.analysis, outcome.fingerprint, self.store, self.results, missing_ok=outcome.skipped
            )
            outcome = dataclasses.replace(outcome, checks=tuple(checks))
        return outcome

    def refuse_bad_config(self, keys: Collection[str], config: Any) -> None:
        """Raise :class:`RunConfigRefused` when ``config``'s overrides make any of ``keys``' jobs invalid
        (a value its ``Params`` refuses, alone or with the job's own values; a type Dagster's config
        let through). Called first in a run, so a refused config changes no partition, record or job
        state: Dagster's launch-time check knows only the config's types, never ``Params``."""
        overrides = overrides_from_config(config, self.analysis)
        if not overrides:
            return
        for key, entry in self.store.get_jobs(self.analysis.name, keys).items():
            try:
                job_of_entry(entry, self.analysis, overrides)
            except (JobFileError, ValidationError) as exc:
                raise RunConfigRefused(
                    f"Run config refused, nothing was run or changed (partition {key} of "
                    f"{self.analysis.name}): {exc}"
                ) from None

    def check_partition(self, key: str, config: Any, missing_ok: bool = False) -> list[CheckOutcome]:
        """The checks of partition ``key``'s recorded result, computing nothing (none when it has no
        record and ``missing_ok``)."""
        _entry, job = load_job(self.analysis, self.store, key, config, self.log)
        return evaluate_checks(self.analysis, job.fingerprint, self.store, self.results, missing_ok)

    # ---- the steps --------------------------------------------------------------------------
    def _run(self, key: str, config: Any) -> PartitionOutcome:
        analysis, log, run_id = self.analysis, self.log, self.place.run_id
        entry, job = load_job(analysis, self.store, key, config, log)
        dry_run = self.runtime.dry_run if config.dry_run is None else bool(config.dry_run)
        force = bool(config.force)
        common: dict[str, Any] = {
            "fingerprint": job.fingerprint,
            "inputs": inputs_table(list(job.inputs)),
            "parameters": MetadataValue.json(job.parameters),
            "analysis_version": analysis.version,
            "job_source": entry.source or "registry",
        }
        if (skipped := self._skip_if_recorded(job, common, force)) is not None:
            return skipped
        code = self.code_state() if self.code_state else self.runtime.code_state(self.analysis)
        try:
            check_may_post(code, dry_run, self.runtime.allow_dirty)
        except DirtyTreeError as exc:
            self.lifecycle.refused(entry, run_id, str(exc))
            raise Failure(str(exc)) from None
        with claimed(self.store, fingerprint_key(job.fingerprint, dry_run), run_id, self.lease_ttl_s) as made:
            if isinstance(made, Held):
                log.info(
                    f"Skipping {key}: fingerprint {job.fingerprint} is being computed by "
                    f"{made.lease.describe()}; that run records it."
                )
                return self._skipped(job, common, f"being computed by run {made.lease.run_id}")
            # Committed by another run between our look and our claim?
            if (skipped := self._skip_if_recorded(job, common, force)) is not None:
                return skipped
            refused = start(self.lifecycle, self.store, entry, run_id, dry_run)
            if refused is not None and refused.startswith("re-registered"):
                return self._skipped(job, common, refused)
            if refused is not None:
                raise Failure(f"Partition {key} of {analysis.name} {refused}.")
            # Under this process's folder of the host's scratch root (analysis_wrapper.scratch), named
            # after the run and the fingerprint, for whoever looks in there.
            base = Path(self.runtime.scratch_root) if self.runtime.scratch_root else None
            prefix = f"{analysis.name}-{job.fingerprint[:12]}-{run_id[:8]}-"
            with scratch_folder(base, prefix) as scratch:
                computed = self._compute(job, code, dry_run, scratch)
                stored = self._store(computed, scratch, force, made)
        metadata = {**common, **computed.metadata, **stored}
        return PartitionOutcome(key, metadata, job.fingerprint, materialized=stored["status"] == "recorded")

    def _skip_if_recorded(
        self, job: AnalysisJob, common: dict[str, Any], force: bool
    ) -> PartitionOutcome | None:
        """The skip of a job recorded already, by us or by the capsule the analysis replaces
        (:func:`~analysis_wrapper.capsule_records.recorded_jobs`); None when it is due (or forced)."""
        found = {} if force else recorded_jobs(self.store, {self.analysis.name: self.analysis}, [job])
        if job.fingerprint not in found:
            return None
        by_capsule = found[job.fingerprint]
        what = f"already {by_capsule.describe()}" if by_capsule else "already recorded"
        self.log.info(
            f"Skipping {job.partition_key}: fingerprint {job.fingerprint} is {what}. "
            "Set force: true in run config to run it again."
        )
        self.lifecycle.found_recorded(job.analysis, job.partition_key, job.fingerprint, self.place.run_id)
        if by_capsule:  # the capsule's record is only read: it shows where the result is
            return PartitionOutcome(
                job.partition_key,
                {
                    **common,
                    **by_capsule.metadata(),
                    LOCATION: by_capsule.location,
                    "status": f"skipped: {what}",
                },
                job.fingerprint,
            )
        return dataclasses.replace(self._skipped(job, common, what), on_record=True)

    def _skipped(self, job: AnalysisJob, common: dict[str, Any], reason: str) -> PartitionOutcome:
        """A skip shows the recorded result it defers to, read from its record (if any)."""
        existing = self.store.get_record(job.analysis, job.fingerprint) or {}
        shown = record_metadata(existing) if existing else {}
        status = {LOCATION: existing.get("location", ""), "status": f"skipped: {reason}"}
        return PartitionOutcome(job.partition_key, {**common, **shown, **status}, job.fingerprint)

    def _compute(self, job: AnalysisJob, code: CodeState, dry_run: bool, scratch: Path) -> Computed:
        try:
            return compute(self.analysis, job, self.runtime, self.place, code, dry_run, scratch)
        except Exception as exc:  # nothing half-done is kept: the scratch folder goes, the job is failed
            self._mark_failed(job, f"{type(exc).__name__}: {exc}")
            if isinstance(exc, InputNotFoundError):
                raise Failure(str(exc)) from None
            raise

    def _store(self, computed: Computed, scratch: Path, force: bool, made: Claim) -> dict[str, Any]:
        try:
            if computed.dry_run:
                return self._write_dry_run(computed, scratch)
            return self._commit(computed, scratch, force, made)
        except ClaimLostError as exc:
            self.log.warning(str(exc))
            return {LOCATION: "", "status": "skipped: claim lost to another run"}
        except Exception as exc:
            self._mark_failed(computed.job, f"storing results failed: {exc}")
            raise

    def _mark_failed(self, job: AnalysisJob, reason: str) -> None:
        try:
            self.lifecycle.failed(job.analysis, job.partition_key, self.place.run_id, reason)
        except StoreError:
            self.log.warning(
                f"cannot mark {job.partition_key} failed in the job registry (store unreachable)"
            )

    def _count_refusal(self, key: str, exc: Exception) -> None:
        """A partition that failed in a run of several is ``failed`` with an attempt counted: one this
        run started was failed where it failed; one refused before it started is refused here."""
        entry = self.store.get_job(self.analysis.name, key)
        if entry is not None and entry.run_id != self.place.run_id:
            self.lifecycle.refused(entry, self.place.run_id, failure_text(exc))

    def _write_dry_run(self, computed: Computed, scratch: Path) -> dict[str, Any]:
        job, storage = computed.job, self.results.dry_runs()
        record = {**computed.record, "location": storage.uri(job.fingerprint)}
        storage.put_result(job.fingerprint, scratch, computed.outputs.model_dump(mode="json"), record)
        self.lifecycle.dry_ran(job.analysis, job.partition_key, self.place.run_id)
        self.log.info(
            f"DRY RUN: results written to {record['location']}; nothing posted to the results root or the "
            "record store. Set DRY_RUN=0 (or dry_run: false in run config) to post."
        )
        return {
            LOCATION: record["location"],
            "results_link": location_link(record["location"]),
            "status": "dry run: not posted (a dry run is no result: an observation, not a materialization)",
        }

    def _check_claim(self, made: Claim, fingerprint: str) -> None:
        """Make sure the run still holds its claim for the next write (half a lease's life, renewed
        now if less is left); refuse to write when another run took it over."""
        if not made.held_for(self.lease_ttl_s / 2):
            raise ClaimLostError(
                f"{fingerprint}: this run's claim expired and another run took it over; this run's result "
                "is discarded (that run records it). Raise LEASE_TTL_S if runs stall this long."
            )

    def _commit(self, computed: Computed, scratch: Path, force: bool, made: Claim) -> dict[str, Any]:
        job, storage, log = computed.job, self.results.results(), self.log
        self._check_claim(made, job.fingerprint)
        existing = self.store.get_record(job.analysis, job.fingerprint)
        if existing is not None and not force:
            # Recorded by a run that held the claim before this one (its commit ended before ours began).
            log.warning(
                f"{job.fingerprint} was recorded by run {existing.get('analysis_wrapper', {}).get('run_id')} "
                "while this run computed; keeping that record, discarding this result."
            )
            self.lifecycle.found_recorded(job.analysis, job.partition_key, job.fingerprint, self.place.run_id)
            return {LOCATION: existing.get("location", ""), "status": "skipped: recorded meanwhile"}
        record = {**computed.record, "location": storage.uri(job.fingerprint)}
        if existing is not None:
            self._supersede(storage, existing, record)
        stored = storage.put_result(
            job.fingerprint, scratch, computed.outputs.model_dump(mode="json"), record
        )
        self._check_claim(made, job.fingerprint)
        try:
            self.store.insert_record(job.analysis, record)
        except RecordExistsError:
            # Only the claimant writes this fingerprint, so this is a record we did not expect: keep it.
            log.warning(f"{job.fingerprint} was recorded concurrently; keeping the first record.")
            self.lifecycle.found_recorded(job.analysis, job.partition_key, job.fingerprint, self.place.run_id)
            return {LOCATION: record["location"], "status": "skipped: recorded concurrently"}
        self.lifecycle.recorded(job.analysis, job.partition_key, self.place.run_id)
        return {
            LOCATION: record["location"],
            "results_link": location_link(record["location"]),
            "status": "recorded",
            "stored_files": len(stored),
        }

    def _supersede(self, storage: ResultsStorage, old: dict[str, Any], new: dict[str, Any]) -> None:
        """Under ``force``: keep the old folder and record, renamed, with a link to the successor."""
        fp = new["_id"]
        suffix = f".superseded-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}"
        old_location = storage.move_aside(fp, suffix)
        kept = json.loads(json.dumps(old, default=str))
        kept["_id"] = f"{fp}{suffix}"
        kept["location"] = old_location or old.get("location")
        kept.setdefault("analysis_wrapper", {})["superseded_by"] = fp
        self.store.supersede_record(new["analysis_wrapper"]["analysis"], fp, kept)
        self.log.info(f"force: previous record of {fp} kept as {kept['_id']} (location {kept['location']}).")
