"""The job registry in MongoDB / DocumentDB: one collection, ``_id`` = ``"<analysis>/<partition key>"``.

Every write is a conditional ``update`` whose filter is the :class:`~analysis_wrapper.store.base.JobMatch`
(the compare-and-set that :mod:`analysis_wrapper.lifecycle` relies on); registration leaves it to the
server's unique ``_id`` index which ids are new.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel, UpdateMany
from pymongo.errors import BulkWriteError

from analysis_wrapper.store.base import (
    JobChange,
    JobEntry,
    JobMatch,
    JobOrder,
    JobRegistry,
    JobState,
    StoreError,
)
from analysis_wrapper.store.fields import (
    ORDER_FIELD,
    change_fields,
    chunks,
    job_fields,
    job_from_fields,
    match_fields,
)
from analysis_wrapper.store.mongo.connection import DUPLICATE_KEY, ID_CHUNK, WRITE_CHUNK, MongoConnection

_INDEXES = [
    # (analysis, state) alone is left out: it is a prefix of the next three, which serve its
    # queries, and every index is one more write per registered job and state change.
    IndexModel([("analysis", ASCENDING), ("created_at", ASCENDING)]),
    # For the sensor's bounded queries (backlog, retries, stale runs, paging by key).
    IndexModel([("analysis", ASCENDING), ("state", ASCENDING), ("created_at", ASCENDING)]),
    IndexModel(
        [("analysis", ASCENDING), ("state", ASCENDING), ("attempts", ASCENDING), ("updated_at", ASCENDING)]
    ),
    # Stale in-flight jobs (the run audit: one state at a time, oldest update first).
    IndexModel([("analysis", ASCENDING), ("state", ASCENDING), ("updated_at", ASCENDING)]),
    IndexModel([("analysis", ASCENDING), ("partition_key", ASCENDING)]),
]


def _job_id(analysis: str, partition_key: str) -> str:
    return f"{analysis}/{partition_key}"


def _match_query(match: JobMatch) -> dict[str, Any]:
    query: dict[str, Any] = {}
    for name, value in match_fields(match).items():
        if name == "state":
            # A single state as a bare equality: servers plan it on the (analysis, state, …) indexes.
            query[name] = value[0] if len(value) == 1 else {"$in": value}
        else:  # run_id None matches null (the field is always written)
            query[name] = {"$lt": value} if name == "updated_at" else value
    return query


def _change_update(change: JobChange) -> dict[str, Any]:
    sets, increment = change_fields(change)
    return {"$set": sets, "$inc": {"attempts": 1}} if increment else {"$set": sets}


class MongoJobRegistry(MongoConnection, JobRegistry):
    """Registered jobs in ``jobs_collection``."""

    jobs_collection: str

    def _jobs(self) -> Any:
        self._ensure_indexes(self.jobs_collection, _INDEXES)
        return self._db()[self.jobs_collection]

    def insert_jobs(self, entries: Sequence[JobEntry]) -> set[tuple[str, str]]:
        wanted: dict[str, JobEntry] = {}
        for entry in entries:
            wanted.setdefault(_job_id(entry.analysis, entry.partition_key), entry)
        if not wanted:
            return set()
        jobs = self._jobs()
        inserted: set[tuple[str, str]] = set()
        for chunk in chunks(list(wanted), WRITE_CHUNK):
            # No lookup first: the server's unique _id index decides which ids are new, also against
            # another process registering the same ids at the same time, and an id that exists is
            # left as it is. (A refused duplicate costs the server less than finding it would.)
            docs = [{"_id": doc_id, **job_fields(wanted[doc_id])} for doc_id in chunk]
            lost = self._insert_new_jobs(jobs, docs)
            inserted.update((wanted[i].analysis, wanted[i].partition_key) for i in chunk if i not in lost)
        return inserted

    def _insert_new_jobs(self, jobs: Any, docs: list[dict[str, Any]]) -> set[str]:
        """Insert ``docs``; the ids that already existed (registered before, or just now by another
        process)."""
        try:
            self._run("register jobs", lambda: jobs.insert_many(docs, ordered=False))
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            others = [error for error in errors if error.get("code") != DUPLICATE_KEY]
            if not others:
                return {docs[error["index"]]["_id"] for error in errors}
            message = (
                f"{self._where()}: registering jobs failed for {len(others)} job(s), first: "
                f"code {others[0].get('code')}: {others[0].get('errmsg')}"
            )
        else:
            return set()
        raise StoreError(self._scrub(message)) from None

    def get_jobs(self, analysis: str, partition_keys: Iterable[str]) -> dict[str, JobEntry]:
        ids = [_job_id(analysis, key) for key in dict.fromkeys(partition_keys)]
        docs = self._find_ids("look up jobs", self._jobs(), ids, None) if ids else []
        return {entry.partition_key: entry for entry in map(job_from_fields, docs)}

    def list_jobs(
        self, analysis: str | None = None, states: Iterable[JobState] | None = None
    ) -> list[JobEntry]:
        query = _match_query(JobMatch(states=None if states is None else frozenset(states)))
        if analysis is not None:
            query["analysis"] = analysis
        sort = [("created_at", ASCENDING), ("_id", ASCENDING)]
        return [job_from_fields(doc) for doc in self._find("list jobs", self._jobs(), query, sort=sort)]

    def _find_jobs(
        self, analysis: str, match: JobMatch, order: JobOrder, after_key: str | None, limit: int
    ) -> list[JobEntry]:
        field = ORDER_FIELD[order]
        if match.states is not None and len(match.states) > 1:
            # One query per state, merged: a bare ``state`` equality uses the (analysis, state, …)
            # indexes on every server, where ``$in`` followed by a range or a sort may be planned as
            # a collection scan (SecantusDB does), which grows with the registry.
            found = [
                entry
                for state in sorted(match.states)
                for entry in self._find_jobs(
                    analysis, dataclasses.replace(match, states=frozenset([state])), order, after_key, limit
                )
            ]
            return sorted(found, key=lambda entry: (getattr(entry, field), entry.partition_key))[:limit]
        query = {**_match_query(match), "analysis": analysis}
        if after_key is not None:
            query["partition_key"] = {"$gt": after_key}
        sort = [(field, ASCENDING)] + ([] if order == "key" else [("_id", ASCENDING)])
        docs = self._find("find jobs", self._jobs(), query, sort=sort, limit=limit)
        return [job_from_fields(doc) for doc in docs]

    def update_each_grouped(
        self, analysis: str, updates: Sequence[tuple[Sequence[str], JobMatch, JobChange]]
    ) -> int:
        """Unordered ``bulk_write`` round trips (each update stands alone) of ``WRITE_CHUNK`` operations,
        each on ``ID_CHUNK`` keys at most."""
        if not updates:
            return 0
        jobs = self._jobs()
        operations = [
            UpdateMany(
                {**_match_query(match), "_id": ids[0] if len(ids) == 1 else {"$in": list(ids)}}, update
            )
            for keys, match, change in updates
            for update in [_change_update(change)]
            for ids in chunks([_job_id(analysis, key) for key in keys], ID_CHUNK)
        ]
        changed = 0
        for chunk in chunks(operations, WRITE_CHUNK):
            result: Any = self._run(
                "update jobs",
                lambda c=chunk: jobs.bulk_write(list(c), ordered=False),  # type: ignore[misc]
            )
            changed += int(result.modified_count)
        return changed
