"""Job registry and records in MongoDB or AWS DocumentDB, through pymongo.

* Records go to one collection per analysis (or to ``collection`` for all), ``_id`` = fingerprint,
  so a second insert of the same fingerprint fails on the server's unique ``_id`` index.
* The registry is one collection (``jobs_collection``) with ``_id`` = ``"<analysis>/<partition key>"``.
* Leases are one collection (``leases_collection``) with ``_id`` = the lease key: a claim is one
  upsert whose filter matches only a free, expired or own lease, so the unique ``_id`` index refuses
  a second claimant (``DuplicateKeyError``).
* DocumentDB-ready: ``retryWrites=False`` (DocumentDB has no retryable writes), optional TLS with a CA
  file, only commands DocumentDB has (``find``, ``insert``, ``update``, ``bulk_write``,
  ``find_one_and_update``, ``create_indexes``).
* Every failure to reach or use the server is raised as :class:`StoreError` naming host(s) and
  database from :func:`redact_uri`; the password never appears in a message, and the original
  exception (which may hold the URI) is neither chained nor kept as context.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pymongo import ASCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from analysis_wrapper.settings import redact_uri
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

log = logging.getLogger(__name__)

ID_CHUNK = 10_000
"""Ids per ``$in`` query (a 64-character fingerprint: about 800 kB of query, far below 16 MB)."""
DUPLICATE_KEY = 11000
_AUTH_ERROR_CODES = {11, 13, 18}  # UserNotFound, Unauthorized, AuthenticationFailed
_INDEX_ERRORS_TO_TOLERATE = {13, 85, 86}  # Unauthorized, IndexOptionsConflict, IndexKeySpecsConflict

T = TypeVar("T")

# Indexes already ensured in this process for clients made from a URI: (uri, database, collection).
_ENSURED_INDEXES: set[tuple[str, str, str]] = set()
_ENSURED_LOCK = threading.Lock()


def _chunks(items: Sequence[T], size: int) -> list[Sequence[T]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def _utc(value: Any) -> dt.datetime:
    """BSON datetimes come back naive (UTC, millisecond precision); strings are ISO-8601."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        return utcnow()
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value


def _bson_time(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _sort_key(record: Mapping[str, Any]) -> tuple[str, str]:
    created = record.get("created")
    if isinstance(created, dt.datetime):
        text = _bson_time(created).isoformat(timespec="microseconds")
    else:
        text = "" if created is None else str(created)
    return (text, str(record.get("_id")))


def _userinfo_and_hosts(uri: str) -> tuple[str, str]:
    """Split a ``mongodb://user:password@host1,host2/db?options`` URI as pymongo reads it, but
    tolerating an unescaped ``/`` in the password: the credentials end at the LAST ``@`` before
    the options."""
    rest = uri.split("://", 1)[-1].split("?", 1)[0]
    userinfo, at, hosts = rest.rpartition("@")
    if not at:
        userinfo, hosts = "", rest
    return userinfo, hosts.split("/", 1)[0]


def uri_hosts(uri: str) -> str:
    """The host list of a ``mongodb://`` / ``mongodb+srv://`` URI, without any credentials."""
    return _userinfo_and_hosts(uri)[1] or "localhost"


def _uri_secrets(uri: str) -> set[str]:
    """The password of ``uri`` in the forms it may appear in (as written, escaped, unescaped)."""
    secrets: set[str] = set()
    try:
        password = urlsplit(uri).password
        if password:
            secrets.add(password)
    except ValueError:
        pass
    userinfo = _userinfo_and_hosts(uri)[0]
    if ":" in userinfo:
        secrets.add(userinfo.split(":", 1)[1])
    for secret in list(secrets):
        secrets.update({quote(secret, safe=""), unquote(secret)})
    return {secret for secret in secrets if secret}


class MongoStore(Store):
    """Job registry and record store in MongoDB / AWS DocumentDB."""

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
        if client is None and not uri:
            raise ValueError("MongoRecordStore needs a mongodb:// URI or a client")
        self._uri = uri
        self.database_name = database
        self.collection = collection
        self.jobs_collection = jobs_collection
        self.leases_collection = leases_collection
        self.tls = tls
        self.tls_ca_file = tls_ca_file
        self.server_selection_timeout_ms = int(server_selection_timeout_ms)
        self.query_count = 0
        self._client = client
        self._owns_client = client is None
        self._client_lock = threading.Lock()
        self._ensured: set[tuple[str, str, str]] = set()  # for a client given by the caller
        self._secrets = _uri_secrets(uri) if uri else set()

    @property
    def uri(self) -> str | None:
        """The URI with the password replaced by ``***`` (safe to show)."""
        return self._scrub(redact_uri(self._uri)) if self._uri else None

    def __repr__(self) -> str:
        where = self.uri or "given client"
        return f"MongoStore({where!r}, database={self.database_name!r})"

    # ---- connection and errors ----------------------------------------------------------------
    def _where(self) -> str:
        if self._uri:
            hosts = self._scrub(uri_hosts(self._uri))
            return f"MongoDB at {hosts} (database {self.database_name!r}, uri {self.uri})"
        return f"MongoDB (given client, database {self.database_name!r})"

    def _scrub(self, text: str) -> str:
        """``text`` without the URI's password in any form."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _store_error(self, action: str, exc: BaseException) -> StoreError:
        reason = str(exc).split(", Timeout:", 1)[0].strip()
        if isinstance(exc, ServerSelectionTimeoutError):
            message = f"cannot reach {self._where()} to {action}: {reason}"
        elif isinstance(exc, ConnectionFailure):
            message = f"lost the connection to {self._where()} while trying to {action}: {reason}"
        elif isinstance(exc, OperationFailure) and exc.code in _AUTH_ERROR_CODES:
            message = (
                f"authentication or authorization failed on {self._where()} while trying to {action} "
                f"(check the user, password and authSource in the URI): {reason}"
            )
        elif isinstance(exc, OperationFailure):
            message = f"{self._where()} refused to {action} (code {exc.code}): {reason}"
        else:
            message = f"{self._where()}: cannot {action}: {type(exc).__name__}: {reason}"
        return StoreError(self._scrub(message))

    def _run(self, action: str, call: Callable[[], T]) -> T:
        """One round trip: counted, and with pymongo failures turned into credential-free
        :class:`StoreError` raised outside the ``except`` block, so no original is kept as context."""
        self.query_count += 1
        try:
            return call()
        except (DuplicateKeyError, BulkWriteError):
            raise  # the callers handle these
        except PyMongoError as exc:
            error = self._store_error(action, exc)
        raise error from None

    def _find(
        self,
        action: str,
        collection: Any,
        query: Mapping[str, Any],
        projection: Mapping[str, Any] | None = None,
        *,
        sort: list[tuple[str, int]] | None = None,
        batch_size: int = 0,
    ) -> list[dict[str, Any]]:
        """A ``find`` read to the end in one round trip (``batch_size`` = the expected count)."""

        def read() -> list[dict[str, Any]]:
            cursor = collection.find(query, projection)
            if sort:
                cursor = cursor.sort(sort)
            if batch_size:
                cursor = cursor.batch_size(batch_size)
            return [dict(doc) for doc in cursor]

        return self._run(action, read)

    def _find_ids(
        self, action: str, collection: Any, ids: Sequence[str], projection: Mapping[str, Any] | None
    ) -> list[dict[str, Any]]:
        return self._find(action, collection, {"_id": {"$in": list(ids)}}, projection, batch_size=len(ids))

    def _find_one(self, action: str, collection: Any, doc_id: str) -> dict[str, Any] | None:
        doc = self._run(action, lambda: collection.find_one({"_id": doc_id}))
        return None if doc is None else dict(doc)

    def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        with self._client_lock:
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import pymongo

        options: dict[str, Any] = {
            "retryWrites": False,  # DocumentDB does not support retryable writes
            "serverSelectionTimeoutMS": self.server_selection_timeout_ms,
        }
        if self.tls is not None:
            options["tls"] = self.tls
        if self.tls_ca_file is not None:
            options["tlsCAFile"] = self.tls_ca_file
        log.debug("connecting to %s", self._where())
        try:
            return pymongo.MongoClient(self._uri, **options)
        except PyMongoError as exc:  # ConfigurationError / InvalidURI: the URI itself is wrong
            error = self._store_error("connect", exc)
        except (TypeError, ValueError) as exc:
            error = StoreError(self._scrub(f"{self._where()}: invalid connection options: {exc}"))
        raise error from None

    def _db(self) -> Any:
        return self._get_client()[self.database_name]

    def _ensure_indexes(self, name: str, indexes: list[IndexModel]) -> None:
        key = (self._uri or "", self.database_name, name)
        ensured = _ENSURED_INDEXES if self._owns_client else self._ensured
        if key in ensured:
            return
        collection = self._db()[name]

        def create() -> None:
            try:
                collection.create_indexes(indexes)
            except OperationFailure as exc:
                # A read-only user, or an index already there under another name or options, must
                # not stop the store from working: the indexes only make the queries fast.
                if exc.code not in _INDEX_ERRORS_TO_TOLERATE:
                    raise
                log.warning("%s: indexes on %r not created (%s)", self._where(), name, self._scrub(str(exc)))

        self._run(f"create indexes on {name!r}", create)
        with _ENSURED_LOCK:
            ensured.add(key)

    def _jobs(self) -> Any:
        self._ensure_indexes(
            self.jobs_collection,
            [
                IndexModel([("analysis", ASCENDING), ("state", ASCENDING)]),
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

    def close(self) -> None:
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            client.close()

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
            "created_at": _bson_time(entry.created_at),
            "updated_at": _bson_time(entry.updated_at),
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
            created_at=_utc(doc.get("created_at")),
            updated_at=_utc(doc.get("updated_at")),
        )

    def insert_jobs(self, entries: Sequence[JobEntry]) -> set[tuple[str, str]]:
        wanted: dict[str, JobEntry] = {}
        for entry in entries:
            wanted.setdefault(self._job_id(entry.analysis, entry.partition_key), entry)
        if not wanted:
            return set()
        jobs = self._jobs()
        inserted: set[tuple[str, str]] = set()
        for chunk in _chunks(list(wanted), ID_CHUNK):
            found = self._find_ids("look up jobs", jobs, chunk, {"_id": 1})
            known = {doc["_id"] for doc in found}
            new = [doc_id for doc_id in chunk if doc_id not in known]
            if not new:
                continue
            # Another process may register the same ids between our find and our insert: the
            # server's unique _id index decides, and those ids are left as that process wrote them.
            lost = self._insert_new_jobs(jobs, [self._job_doc(wanted[doc_id]) for doc_id in new])
            inserted.update(
                (wanted[doc_id].analysis, wanted[doc_id].partition_key)
                for doc_id in new
                if doc_id not in lost
            )
        return inserted

    def _insert_new_jobs(self, jobs: Any, docs: list[dict[str, Any]]) -> set[str]:
        """Insert ``docs``; the ids that already existed (a concurrent registration)."""
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
        for chunk in _chunks(ids, ID_CHUNK):
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

    def find_jobs(
        self,
        analysis: str,
        *,
        limit: int,
        states: Iterable[JobState] | None = None,
        order: JobOrder = "created",
        after_key: str | None = None,
        updated_before: dt.datetime | None = None,
        attempts: int | None = None,
    ) -> list[JobEntry]:
        if limit <= 0:
            return []
        match = JobMatch(
            states=None if states is None else frozenset(states),
            attempts=attempts,
            updated_before=updated_before,
        )
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
            return [dict(doc) for doc in jobs.find(query).sort(sort).limit(int(limit))]

        return [self._job_from_doc(doc) for doc in self._run("find jobs", read)]

    @staticmethod
    def _match_query(match: JobMatch) -> dict[str, Any]:
        query: dict[str, Any] = {}
        if match.states is not None:
            query["state"] = {"$in": sorted(JobState(state).value for state in match.states)}
        if match.run_id is not ANY:
            query["run_id"] = match.run_id  # None matches null (the field is always written)
        if match.attempts is not None:
            query["attempts"] = int(match.attempts)
        if match.fingerprint is not None:
            query["fingerprint"] = match.fingerprint
        if match.updated_before is not None:
            query["updated_at"] = {"$lt": _bson_time(match.updated_before)}
        return query

    @staticmethod
    def _change_update(change: JobChange) -> dict[str, Any]:
        changes: dict[str, Any] = {"state": JobState(change.state).value, "updated_at": _bson_time(utcnow())}
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
        for chunk in _chunks(ids, ID_CHUNK):
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
        for chunk in _chunks(operations, ID_CHUNK):
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
        for chunk in _chunks(ids, ID_CHUNK):
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
            found.sort(key=_sort_key)
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
            expires_at=_utc(doc["expires_at"]),
        )

    def claim_lease(self, lease: Lease, now: dt.datetime, *, replacing_token: str | None = None) -> bool:
        leases = self._leases()
        tokens = list(dict.fromkeys([lease.token, replacing_token or lease.token]))
        query = {
            "_id": lease.key,
            "$or": [{"expires_at": {"$lt": _bson_time(now)}}, {"token": {"$in": tokens}}],
        }
        update = {
            "$set": {
                "run_id": lease.run_id,
                "host": lease.host,
                "pid": int(lease.pid),
                "token": lease.token,
                "expires_at": _bson_time(lease.expires_at),
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
                {"_id": key, "token": token}, {"$set": {"expires_at": _bson_time(expires_at)}}
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
