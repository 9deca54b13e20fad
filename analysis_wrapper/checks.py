"""The asset check of every recorded partition: is the result what its record says it is?

One check per partition of ``<analysis>_result``, ``matches_record``, evaluated right after the
partition's result is committed (by the result asset and by batch runs alike), so each materialization
shows it; a run that skips a recorded partition evaluates it too, so the Checks tab shows the recorded
result's real state, never "Skipped". It has three parts, each named in its metadata and, when it
fails, in its description:

* ``folder_complete``: every file the record lists is in the results folder with the listed size,
  and ``outputs.json`` and ``metadata.nd.json`` are there (the latter naming the record's run);
* ``record_in_store``: the record store holds the record under the fingerprint, pointing at the folder;
* ``outputs_valid``: ``outputs.json`` validates against the analysis's ``Outputs`` model and equals
  the record's ``output_parameters``.

Why one check and not three: Dagster writes each check evaluation as its own event, three SQLite
transactions on the shared index database (two for a materialization). Three checks were most of a
small job's cost inside a run, and more under two concurrent runs (one run of 100 trivial jobs through
the daemon: 11.0 s with three check events per partition, 3.7 s with one; ``benchmarks/``). One event
that names its three parts keeps what is checked and what a failure says.

A failed check is an ERROR (red in the UI) whose description says which part is wrong and why; checks
never raise: a store or storage that cannot be read is a failed check with the reason.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    MetadataValue,
    PartitionsDefinition,
    PreviewWarning,
)
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationTargetMaterializationData,  # the type of a public field, not exported
)
from pydantic import ValidationError

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.resources.results_resources import ResultsStorageResource
from analysis_wrapper.resources.results_storage import OUTPUTS_FILE, RECORD_FILE
from analysis_wrapper.result_metadata import location_link
from analysis_wrapper.store.base import Store

MATCHES_RECORD = "matches_record"
CHECK_NAMES = (MATCHES_RECORD,)
"""The asset checks of a result asset (one)."""
FOLDER_COMPLETE = "folder_complete"
RECORD_IN_STORE = "record_in_store"
OUTPUTS_VALID = "outputs_valid"
PART_NAMES = (FOLDER_COMPLETE, RECORD_IN_STORE, OUTPUTS_VALID)
"""The parts of ``matches_record``, in the order its description and metadata list them."""

_DESCRIPTION = (
    "The result agrees with its record: every file the record lists is in the results folder with its "
    "size (folder_complete); the record store holds the record under the fingerprint, pointing at the "
    "folder (record_in_store); outputs.json validates against the analysis's Outputs model and matches "
    "the record (outputs_valid)."
)


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def result(self) -> AssetCheckResult:
        return AssetCheckResult(
            check_name=self.name,
            passed=self.passed,
            severity=AssetCheckSeverity.ERROR,
            description=self.description,
            metadata=self.metadata,
        )

    def evaluation(
        self, asset_key: AssetKey, partition: str, instance: DagsterInstance
    ) -> AssetCheckEvaluation:
        """The same result as an event a plain op (a batch run) or a ranged run reports for one
        partition, aimed at the partition's latest materialization (what Dagster's own
        ``AssetCheckResult`` does in a one-partition step): without it the check's *Partitions* view
        counts a passed check of the recorded result as not evaluated."""
        return AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=self.name,
            passed=self.passed,
            metadata=self.result().metadata,
            severity=AssetCheckSeverity.ERROR,
            description=self.description,
            partition=partition,
            target_materialization_data=_latest_materialization(instance, asset_key, partition),
        )


def _latest_materialization(
    instance: DagsterInstance, asset_key: AssetKey, partition: str
) -> AssetCheckEvaluationTargetMaterializationData | None:
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    if not records:
        return None
    latest = records[0]
    return AssetCheckEvaluationTargetMaterializationData(
        storage_id=latest.storage_id, run_id=latest.run_id, timestamp=latest.timestamp
    )


def check_specs(asset_key: AssetKey, partitions: PartitionsDefinition) -> list[AssetCheckSpec]:
    """The check's spec, partitioned like the asset, so the UI shows each partition's result."""
    # Partitioned checks are a preview feature in Dagster 1.13; we rely on it knowingly.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PreviewWarning)
        return _specs(asset_key, partitions)


def _specs(asset_key: AssetKey, partitions: PartitionsDefinition) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(MATCHES_RECORD, asset=asset_key, description=_DESCRIPTION, partitions_def=partitions)
    ]


def evaluate_checks(
    analysis: Analysis[Any, Any],
    fingerprint: str,
    store: Store,
    results: ResultsStorageResource,
    missing_ok: bool = False,
) -> list[CheckOutcome]:
    """The check of the result recorded under ``fingerprint`` (one record read, one listing of the
    folder, two small files read), as a list of checks (one). No record fails it, or, ``missing_ok``
    (a skip for a run that records it, a capsule's record), gives no check: nothing of ours to check."""
    return [matches_record(parts) for parts in _parts(analysis, fingerprint, store, results, missing_ok)]


def matches_record(parts: list[CheckOutcome]) -> CheckOutcome:
    """``matches_record`` from its parts: passed when all passed; the description says what each failed
    part found (or, all passed, what each confirmed); each part's verdict is a metadata entry."""
    failed = [p for p in parts if not p.passed]
    shown = failed or parts
    description = "; ".join(f"{p.name}: {p.description}" for p in shown)
    metadata: dict[str, Any] = {}
    for part in parts:
        metadata.update(part.metadata)
    for part in parts:
        verdict = "passed" if part.passed else "FAILED"
        metadata[part.name] = MetadataValue.text(f"{verdict}: {part.description}")
    return CheckOutcome(MATCHES_RECORD, not failed, description, metadata)


def _parts(
    analysis: Analysis[Any, Any],
    fingerprint: str,
    store: Store,
    results: ResultsStorageResource,
    missing_ok: bool,
) -> list[list[CheckOutcome]]:
    """The three parts of the check, in ``PART_NAMES`` order (no list at all: ``missing_ok``, no record)."""
    try:
        record = store.get_record(analysis.name, fingerprint)
    except Exception as exc:
        reason = f"cannot read the record store: {type(exc).__name__}: {exc}"
        return [[CheckOutcome(name, False, reason) for name in PART_NAMES]]
    if record is None:
        if missing_ok:
            return []
        reason = f"no record of {analysis.name} under fingerprint {fingerprint} in the record store"
        return [[CheckOutcome(name, False, reason) for name in PART_NAMES]]
    location = str(record.get("location") or "")
    in_store = _record_in_store(record, fingerprint, location)
    try:
        storage, name = results.at_location(location)
        listed = {f.name: f.size for f in storage.list_files(name)}
    except Exception as exc:
        reason = f"cannot list the results folder {location}: {type(exc).__name__}: {exc}"
        return [
            [
                CheckOutcome(FOLDER_COMPLETE, False, reason),
                in_store,
                CheckOutcome(OUTPUTS_VALID, False, reason),
            ]
        ]
    complete = _folder_complete(record, listed, location, lambda n: storage.read_bytes(name, n))
    valid = _outputs_valid(analysis, record, listed, lambda n: storage.read_bytes(name, n))
    return [[complete, in_store, valid]]


def _record_in_store(record: dict[str, Any], fingerprint: str, location: str) -> CheckOutcome:
    wrapper = record.get("analysis_wrapper") or {}
    wrong = [
        f"{field_name} is {value!r}"
        for field_name, value in (
            ("_id", record.get("_id")),
            ("name", record.get("name")),
            ("analysis_wrapper.fingerprint", wrapper.get("fingerprint")),
        )
        if value != fingerprint
    ]
    if not location:
        wrong.append("location is empty")
    metadata: dict[str, Any] = {"fingerprint": fingerprint, "run_id": str(wrapper.get("run_id") or "")}
    if location:
        metadata["results_link"] = location_link(location)
    if wrong:
        return CheckOutcome(RECORD_IN_STORE, False, f"record {fingerprint}: {'; '.join(wrong)}", metadata)
    return CheckOutcome(RECORD_IN_STORE, True, f"recorded under {fingerprint}, location {location}", metadata)


def _folder_complete(
    record: dict[str, Any], listed: dict[str, int], location: str, read: Any
) -> CheckOutcome:
    expected = {
        str(f["name"]): int(f["size"]) for f in (record.get("analysis_wrapper") or {}).get("files") or []
    }
    problems = [f"{name} missing" for name in (OUTPUTS_FILE, RECORD_FILE) if name not in listed]
    for name, size in expected.items():
        if name not in listed:
            problems.append(f"{name} missing")
        elif listed[name] != size:
            problems.append(f"{name} has {listed[name]} bytes, the record says {size}")
    if RECORD_FILE in listed:
        try:
            folder_run = (json.loads(read(RECORD_FILE)).get("analysis_wrapper") or {}).get("run_id")
        except Exception as exc:
            problems.append(f"{RECORD_FILE} unreadable: {type(exc).__name__}: {exc}")
        else:
            record_run = (record.get("analysis_wrapper") or {}).get("run_id")
            if folder_run != record_run:
                problems.append(f"{RECORD_FILE} names run {folder_run}, the record run {record_run}")
    metadata = {
        "files_listed_in_record": len(expected),
        "files_in_folder": len(listed),
        "folder": location_link(location) if location else "",
    }
    if problems:
        shown = "; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else "")
        return CheckOutcome(FOLDER_COMPLETE, False, f"{location}: {shown}", metadata)
    return CheckOutcome(
        FOLDER_COMPLETE,
        True,
        f"all {len(expected)} result files and the record's two files are there",
        metadata,
    )


def _outputs_valid(
    analysis: Analysis[Any, Any], record: dict[str, Any], listed: dict[str, int], read: Any
) -> CheckOutcome:
    if OUTPUTS_FILE not in listed:
        return CheckOutcome(OUTPUTS_VALID, False, f"{OUTPUTS_FILE} is missing from the results folder")
    try:
        data = json.loads(read(OUTPUTS_FILE))
        outputs = analysis.outputs.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        return CheckOutcome(
            OUTPUTS_VALID,
            False,
            f"{OUTPUTS_FILE} does not validate against {analysis.outputs.__name__}: {where}: {first['msg']}",
        )
    except Exception as exc:
        return CheckOutcome(OUTPUTS_VALID, False, f"{OUTPUTS_FILE} unreadable: {type(exc).__name__}: {exc}")
    process = ((record.get("processing") or {}).get("data_processes") or [{}])[0]
    if outputs.model_dump(mode="json") != process.get("output_parameters"):
        return CheckOutcome(
            OUTPUTS_VALID, False, f"{OUTPUTS_FILE} differs from the record's output_parameters"
        )
    return CheckOutcome(OUTPUTS_VALID, True, f"{OUTPUTS_FILE} is a valid {analysis.outputs.__name__}")
