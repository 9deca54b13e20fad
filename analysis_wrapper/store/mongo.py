"""Job registry and records in MongoDB or AWS DocumentDB, through pymongo.

* Records go to one collection per analysis (or to ``collection`` for all), ``_id`` = fingerprint,
  so a second insert of the same fingerprint fails on the server's unique ``_id`` index.
* The registry is one collection (``jobs_collection``) with ``_id`` = ``"<analysis>/<partition key>"``.
* Leases are one collection (``leases_collection``) with ``_id`` = the lease key: a claim is one
  upsert whose filter matches only a free, expired or own lease, so the unique ``_id`` index refuses
  a second claimant (``DuplicateKeyError``).
* Only commands DocumentDB has (``find``, ``insert``, ``update``, ``bulk_write``,
  ``find_one_and_update``, ``create_indexes``). The client, credential-free errors and round-trip
  counting are :class:`~analysis_wrapper.store.mongo_connection.MongoConnection`'s.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    DuplicateKeyError,
)

from analysis_wrapper.store.base import (
    ANY,
    KEEP,
    JobChange,
    JobEntry,
    JobMatch,
    JobOrder,
    JobState,
    Lease,
    RecordExistsError,
    Store,
    StoreError,
    utcnow,
)
from analysis_wrapper.store.mongo_connection import (
    DUPLICATE_KEY,
    ID_CHUNK,
    WRITE_CHUNK,
    MongoConnection,
    as_utc,
    bson_time,
    chunks,
    record_sort_key,
)

log = logging.getLogger(__name__)

_ORDER_KEYS: dict[str, Any] = {
    "created": lambda entry: (entry.created_at, entry.partition_key),
    "updated": lambda entry: (entry.updated_at, entry.partition_key),
    "key": lambda entry: entry.partition_key,
}
"""``find_jobs``'s orders, in Python: merging one query per state gives the server's order."""


class MongoStore(MongoConnection, Store):
    """Job registry, records and leases in MongoDB / AWS DocumentDB."""

    analysis_field = "analysis_wrapper.analysis"
    """Record field holding the analysis name; used (and indexed) only when all analyses share one
    record ``collection``, to find the records of one analysis there."""

    def __init__(
        self,
        uri: str | None = None,
        *,
        database: str = "analysis",
        collection: str | None = None,
        jobs_collection: str = "analysis_wrapper_jobs",
        leases_collection: str = "analysis_wrapper_leases",
        client: Any = None,
        tls: bool | None = None,
        tls_ca_file: str | None = None,
        server_selection_timeout_ms: int = 10000,
    ):
        super().__init__(
            uri,
            database=database,
            client=client,
            tls=tls,
            tls_ca_file=tls_ca_file,
            server_selection_timeout_ms=server_selection_timeout_ms,
        )
        self.collection = collection
        self.jobs_collection = jobs_collection
        self.leases_collection = leases_collection

    def __repr__(self) -> str:
        where = self.uri or "given client"
        return f"MongoStore({where!r}, database={self.database_name!r})"

    # ---- collections --------------------------------------------------------------------------
    def _jobs(self) -> Any:
        self._ensure_indexes(
            self.jobs_collection,
            [
                # (analysis, state) alone is left out: it is a prefix of the next three, which serve
                # its queries, and every index is one more write per registered job and state change.
                IndexModel([("analysis", ASCENDING), ("created_at", ASCENDING)]),
                # For the sensor's bounded queries (backlog, retries, stale runs, paging by key).
                IndexModel([("analysis", ASCENDING), ("state", ASCENDING), ("created_at", ASCENDING)]),
                IndexModel(
                    [
                        ("analysis", ASCENDING),
                        ("state", ASCENDING),
                        ("attempts", ASCENDING),
                        ("updated_at", ASCENDING),
                    ]
                ),
                # Stale in-flight jobs (the run audit: one state at a time, oldest update first).
                IndexModel([("analysis", ASCENDING), ("state", ASCENDING), ("updated_at", ASCENDING)]),
                IndexModel([("analysis", ASCENDING), ("partition_key", ASCENDING)]),
            ],
        )
        return self._db()[self.jobs_collection]

    def _records_name(self, analysis: str) -> str:
        return self.collection or analysis

    def _records(self, analysis: str) -> Any:
        return self._record_collection(self._records_name(analysis))

    def _record_collection(self, name: str) -> Any:
        indexes = [IndexModel([("name", ASCENDING)]), IndexModel([("created", ASCENDING)])]
        if self.collection:
            indexes.append(IndexModel([(self.analysis_field, ASCENDING)]))
        self._ensure_indexes(name, indexes)
        return self._db()[name]

    # ---- job registry -------------------------------------------------------------------------
    @staticmethod
    def _job_id(analysis: str, partition_key: str) -> str:
        return f"{analysis}/{partition_key}"

    def _job_doc(self, entry: JobEntry) -> dict[str, Any]:
        return {
            "_id": self._job_id(entry.analysis, entry.partition_key),
            "analysis": entry.analysis,
            "partition_key": entry.partition_key,
            "fingerprint": entry.fingerprint,
            "state": JobState(entry.state).value,
            "job": dict(entry.job),
            "source": entry.source or "",
            "run_id": entry.run_id,
            "attempts": int(entry.attempts),
            "last_error": entry.last_error,
            "created_at": bson_time(entry.created_at),
            "updated_at": bson_time(entry.updated_at),
        }

    @staticmethod
    def _job_from_doc(doc: Mapping[str, Any]) -> JobEntry:
        return JobEntry(
            analysis=doc["analysis"],
            partition_key=doc["partition_key"],
            fingerprint=doc["fingerprint"],
            job=dict(doc.get("job") or {}),
            source=doc.get("source") or "",
            state=JobState(doc["state"]),
            run_id=doc.get("run_id"),
            attempts=int(doc.get("attempts") or 0),
            last_error=doc.get("last_error"),
            created_at=as_utc(doc.get("created_at")),
            updated_at=as_utc(doc.get("updated_at")),
        )

    def insert_jobs(self, entries: Sequence[JobEntry]) -> set[tuple[str, str]]:
        wanted: dict[str, JobEntry] = {}
        for entry in entries:
            wanted.setdefault(self._job_id(entry.analysis, entry.partition_key), entry)
        if not wanted:
            return set()
        jobs = self._jobs()
        inserted: set[tuple[str, str]] = set()
        for chunk in chunks(list(wanted), WRITE_CHUNK):
            # No lookup first: the server's unique _id index decides which ids are new, also against
            # another process registering the same ids at the same time, and an id that exists is
            # left as it is. (A refused duplicate costs the server less than finding it would.)
            lost = self._insert_new_jobs(jobs, [self._job_doc(wanted[doc_id]) for doc_id in chunk])
            inserted.update(
                (wanted[doc_id].analysis, wanted[doc_id].partition_key)
                for doc_id in chunk
                if doc_id not in lost
            )
        return inserted

    def _insert_new_jobs(self, jobs: Any, docs: list[dict[str, Any]]) -> set[str]:
        """Insert ``docs``; the ids that already existed (registered before, or just now by another
        process)."""
        try:
            self._run("register jobs", lambda: jobs.insert_many(docs, ordered=False))
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            others = [error for error in errors if error.get("code") != DUPLICATE_KEY]
            if others:
                first = others[0]
                error = StoreError(
                    self._scrub(
                        f"{self._where()}: registering jobs failed for {len(others)} job(s), first: "
                        f"code {first.get('code')}: {first.get('errmsg')}"
                    )
                )
            else:
                return {docs[error["index"]]["_id"] for error in errors}
        else:
            return set()
        raise error from None

    def get_jobs(self, analysis: str, partition_keys: Iterable[str]) -> dict[str, JobEntry]:
        ids = [self._job_id(analysis, key) for key in dict.fromkeys(partition_keys)]
        if not ids:
            return {}
        jobs = self._jobs()
        found: dict[str, JobEntry] = {}
        for chunk in chunks(ids, ID_CHUNK):
            docs = self._find_ids("look up jobs", jobs, chunk, None)
            for doc in docs:
                entry = self._job_from_doc(doc)
                found[entry.partition_key] = entry
        return found

    def list_jobs(
        self, analysis: str | None = None, states: Iterable[JobState] | None = None
    ) -> list[JobEntry]:
        query = self._match_query(JobMatch(states=None if states is None else frozenset(states)))
        if analysis is not None:
            query["analysis"] = analysis
        jobs = self._jobs()
        docs = self._find("list jobs", jobs, query, sort=[("created_at", ASCENDING), ("_id", ASCENDING)])
        return [self._job_from_doc(doc) for doc in docs]

    def _find_jobs(
        self, analysis: str, match: JobMatch, order: JobOrder, after_key: str | None, limit: int
    ) -> list[JobEntry]:
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
            return sorted(found, key=_ORDER_KEYS[order])[:limit]
        query = {**self._match_query(match), "analysis": analysis}
        if after_key is not None:
            query["partition_key"] = {"$gt": after_key}
        sort = {
            "created": [("created_at", ASCENDING), ("_id", ASCENDING)],
            "updated": [("updated_at", ASCENDING), ("_id", ASCENDING)],
            "key": [("partition_key", ASCENDING)],
        }[order]
        jobs = self._jobs()

        def read() -> list[dict[str, Any]]:
            return [dict(doc) for doc in jobs.find(query).sort(sort).limit(limit)]

        return [self._job_from_doc(doc) for doc in self._run("find jobs", read)]

    @staticmethod
    def _match_query(match: JobMatch) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if match.states is not None:
            values = sorted(JobState(state).value for state in match.states)
            # A single state as a bare equality: servers plan it on the (analysis, state, …) indexes.
            query["state"] = values[0] if len(values) == 1 else {"$in": values}
        if match.run_id is not ANY:
            query["run_id"] = match.run_id  # None matches null (the field is always written)
        if match.attempts is not None:
            query["attempts"] = int(match.attempts)
        if match.fingerprint is not None:
            query["fingerprint"] = match.fingerprint
        if match.updated_before is not None:
            query["updated_at"] = {"$lt": bson_time(match.updated_before)}
        return query

    @staticmethod
    def _change_update(change: JobChange) -> dict[str, Any]:
        changes: dict[str, Any] = {"state": JobState(change.state).value, "updated_at": bson_time(utcnow())}
        if change.run_id is not KEEP:
            changes["run_id"] = change.run_id
        if change.error is not KEEP:
            changes["last_error"] = change.error
        if change.attempts == "reset":
            changes["attempts"] = 0
        if change.fingerprint is not None:
            changes.update(
                fingerprint=change.fingerprint, job=dict(change.job or {}), source=change.source or ""
            )
        update: dict[str, Any] = {"$set": changes}
        if change.attempts == "increment":
            update["$inc"] = {"attempts": 1}
        return update

    def update_jobs(
        self, analysis: str, partition_keys: Iterable[str], match: JobMatch, change: JobChange
    ) -> int:
        ids = [self._job_id(analysis, key) for key in dict.fromkeys(partition_keys)]
        if not ids:
            return 0
        jobs = self._jobs()
        condition = self._match_query(match)
        update = self._change_update(change)
        changed = 0
        for chunk in chunks(ids, ID_CHUNK):
            query = {**condition, "_id": chunk[0] if len(chunk) == 1 else {"$in": list(chunk)}}
            result: Any = self._run("update jobs", lambda q=query: jobs.update_many(q, update))  # type: ignore[misc]
            changed += int(result.modified_count)
        return changed

    def update_each(self, analysis: str, updates: Sequence[tuple[str, JobMatch, JobChange]]) -> int:
        """One ``bulk_write`` round trip for many conditional updates (unordered: each stands alone)."""
        if not updates:
            return 0
        jobs = self._jobs()
        operations = [
            UpdateOne(
                {**self._match_query(match), "_id": self._job_id(analysis, key)}, self._change_update(change)
            )
            for key, match, change in updates
        ]
        changed = 0
        for chunk in chunks(operations, WRITE_CHUNK):
            result: Any = self._run(
                "update jobs",
                lambda c=chunk: jobs.bulk_write(list(c), ordered=False),  # type: ignore[misc]
            )
            changed += int(result.modified_count)
        return changed

    # ---- record store -------------------------------------------------------------------------
    def existing_fingerprints(self, analysis: str, fingerprints: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(fingerprints))
        if not ids:
            return set()
        records = self._records(analysis)
        found: set[str] = set()
        for chunk in chunks(ids, ID_CHUNK):
            docs = self._find_ids("look up records", records, chunk, {"_id": 1})
            found.update(doc["_id"] for doc in docs)
        return found

    def insert_record(self, analysis: str, record: Mapping[str, Any]) -> None:
        if "_id" not in record:
            raise ValueError("a record needs an '_id' (its fingerprint)")
        doc = dict(record)
        records = self._records(analysis)
        try:
            self._run("insert a record", lambda: records.insert_one(doc))
        except DuplicateKeyError:
            error = RecordExistsError(str(record["_id"]))
        else:
            return
        raise error from None

    def supersede_record(self, analysis: str, fingerprint: str, kept: Mapping[str, Any]) -> None:
        """Move the record of ``fingerprint`` aside as ``kept`` (stored under ``kept['_id']``),
        freeing the fingerprint for a new record. Two commands (DocumentDB has no multi-document
        transactions outside replica sets): the copy is written before the original is removed."""
        kept_id = str(kept["_id"])
        if kept_id == fingerprint:
            raise ValueError("the superseded record needs an '_id' other than the fingerprint")
        records = self._records(analysis)
        doc = dict(kept)
        try:
            self._run("keep a superseded record", lambda: records.insert_one(doc))
        except DuplicateKeyError:
            error = RecordExistsError(kept_id)
        else:
            self._run("remove a superseded record", lambda: records.delete_one({"_id": fingerprint}))
            return
        raise error from None

    def get_record(self, analysis: str, fingerprint: str) -> dict[str, Any] | None:
        records = self._records(analysis)
        return self._find_one("read a record", records, fingerprint)

    def _record_collections(self) -> list[str]:
        if self.collection:
            return [self.collection]
        db = self._db()
        names = self._run("list record collections", lambda: db.list_collection_names())
        return sorted(
            name
            for name in names
            if name not in (self.jobs_collection, self.leases_collection) and not name.startswith("system.")
        )

    def find_records(
        self,
        analysis: str | None = None,
        *,
        parameters: Mapping[str, Any] | None = None,
        code_version: str | None = None,
        include_superseded: bool = False,
    ) -> list[dict[str, Any]]:
        """Oldest first by the records' ``created`` field, then ``_id``. Without an analysis, the
        records of every record collection in the database (all but the jobs collection)."""
        query: dict[str, Any] = {}
        if analysis is not None and self.collection:
            query[self.analysis_field] = analysis
        code = "processing.data_processes.0.code"
        if code_version is not None:
            query[f"{code}.version"] = code_version
        conditions: list[dict[str, Any]] = []
        for name, value in (parameters or {}).items():
            path = f"{code}.parameters.{name}"
            if value is None:
                # MongoDB's null-or-missing, spelled so that servers which get null wrong on positional
                # paths (``a.0.b``) agree with MongoDB: ``$type`` and ``$exists`` work on both.
                conditions.append({"$or": [{path: {"$type": "null"}}, {path: {"$exists": False}}]})
            else:
                query[path] = value
        if conditions:
            query["$and"] = conditions
        if not include_superseded:
            query["analysis_wrapper.superseded_by"] = None
        names = [self._records_name(analysis)] if analysis is not None else self._record_collections()
        found: list[dict[str, Any]] = []
        for name in names:
            records = self._record_collection(name)
            found.extend(
                self._find("read records", records, query, sort=[("created", ASCENDING), ("_id", ASCENDING)])
            )
        if len(names) > 1:
            found.sort(key=record_sort_key)
        return found

    # ---- leases -------------------------------------------------------------------------------
    def _leases(self) -> Any:
        return self._db()[self.leases_collection]

    @staticmethod
    def _lease_from_doc(doc: Mapping[str, Any]) -> Lease:
        return Lease(
            key=doc["_id"],
            run_id=doc["run_id"],
            host=doc["host"],
            pid=int(doc["pid"]),
            token=doc["token"],
            expires_at=as_utc(doc["expires_at"]),
        )

    def claim_lease(self, lease: Lease, now: dt.datetime, *, replacing_token: str | None = None) -> bool:
        leases = self._leases()
        tokens = list(dict.fromkeys([lease.token, replacing_token or lease.token]))
        query = {
            "_id": lease.key,
            "$or": [{"expires_at": {"$lt": bson_time(now)}}, {"token": {"$in": tokens}}],
        }
        update = {
            "$set": {
                "run_id": lease.run_id,
                "host": lease.host,
                "pid": int(lease.pid),
                "token": lease.token,
                "expires_at": bson_time(lease.expires_at),
            }
        }
        try:
            self._run(
                "claim a lease",
                lambda: leases.find_one_and_update(
                    query, update, upsert=True, return_document=ReturnDocument.AFTER
                ),
            )
        except DuplicateKeyError:
            return False  # the key exists and is held, unexpired, by someone else
        return True

    def renew_lease(self, key: str, token: str, expires_at: dt.datetime) -> bool:
        leases = self._leases()
        result: Any = self._run(
            "renew a lease",
            lambda: leases.update_one(
                {"_id": key, "token": token}, {"$set": {"expires_at": bson_time(expires_at)}}
            ),
        )
        return int(result.matched_count) > 0

    def release_lease(self, key: str, token: str) -> None:
        leases = self._leases()
        self._run("release a lease", lambda: leases.delete_one({"_id": key, "token": token}))

    def get_leases(self, keys: Iterable[str]) -> dict[str, Lease]:
        ids = list(dict.fromkeys(keys))
        if not ids:
            return {}
        docs = self._find_ids("look up leases", self._leases(), ids, None)
        return {doc["_id"]: self._lease_from_doc(doc) for doc in docs}
