"""Queries on the records and the job registry, written once for every reader: ``analysis-wrapper
status`` / ``results`` / ``retry``, and notebooks (:func:`results_frame`, the rows of the
``<analysis>_summary`` asset straight from the record store the settings name)::

    from analysis_wrapper.records import results_frame
    df = results_frame("isi_violations", params={"isi_violations_cutoff": 0.5}, latest=True)

The filters run in the database (merged parameters, analysis version, superseded records).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dagster_aws.s3 import S3Resource

from analysis_wrapper.code_location import store_resource
from analysis_wrapper.resources.results_resources import storage_for_location
from analysis_wrapper.resources.s3_client import cached_client
from analysis_wrapper.settings import Settings
from analysis_wrapper.store.base import JobEntry, Store
from analysis_wrapper.summary.table import summary_frame

if TYPE_CHECKING:
    import pandas as pd


def find_records(
    store: Store,
    analysis: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    code_version: str | None = None,
    latest: bool = False,
    include_superseded: bool = False,
) -> list[dict[str, Any]]:
    """Records, oldest first: of ``analysis`` (default: all), whose merged parameters hold ``params``
    exactly, of analysis version ``code_version``, only the newest per input (``latest``), and those
    replaced under ``force`` too (``include_superseded``)."""
    records = store.find_records(
        analysis,
        parameters=dict(params) if params else None,
        code_version=code_version,
        include_superseded=include_superseded,
    )
    return latest_per_input(records) if latest else records


def latest_per_input(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record for each (analysis, input locations); records come oldest first."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        extra = record.get("analysis_wrapper", {})
        latest[(extra.get("analysis"), tuple(extra.get("inputs") or ()))] = record
    return list(latest.values())


def add_files(records: Iterable[dict[str, Any]], s3: S3Resource) -> None:
    """Give each record a ``files`` list (name, size) of its result folder, wherever it is (local folder
    or S3: a client is made only when a record lives there)."""
    records = list(records)
    s3_client = cached_client(s3) if any(r["location"].startswith("s3://") for r in records) else None
    for record in records:
        storage, name = storage_for_location(record["location"], s3_client)
        record["files"] = [{"name": f.name, "size": f.size} for f in storage.list_files(name)]


def jobs_by_key(store: Store, analyses: Iterable[str], keys: Sequence[str]) -> dict[str, JobEntry]:
    """The registered jobs with these partition keys, looked up in ``analyses`` in turn (the first
    analysis holding a key wins)."""
    found: dict[str, JobEntry] = {}
    for name in analyses:
        for key, entry in store.get_jobs(name, keys).items():
            found.setdefault(key, entry)
    return found


def results_frame(
    analysis: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    code_version: str | None = None,
    latest: bool = False,
    include_superseded: bool = False,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """One row per record (:func:`find_records`, the filters of ``analysis-wrapper results``), as the
    ``<analysis>_summary`` asset holds them (:mod:`analysis_wrapper.summary.table`)."""
    store = store_resource(settings or Settings()).get_store()
    return summary_frame(
        find_records(
            store,
            analysis,
            params=params,
            code_version=code_version,
            latest=latest,
            include_superseded=include_superseded,
        )
    )
