"""The record store in MongoDB / DocumentDB: one collection per analysis (or ``collection`` for all).

``_id`` = fingerprint, so a second insert of the same fingerprint fails on the server's unique
``_id`` index; filters on the record run in the server's query.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.errors import DuplicateKeyError

from analysis_wrapper.store.base import RecordExistsError, RecordQuery, RecordStore
from analysis_wrapper.store.fields import chunks, iso_utc
from analysis_wrapper.store.mongo.connection import MongoConnection

_CODE = "processing.data_processes.0.code"
CAPSULE_URL_CHUNK = 500
"""Input locations per capsule-record query (a job asks for two spellings of each: with and without "/")."""


def record_sort_key(record: Mapping[str, Any]) -> tuple[str, str]:
    """Records of several collections in one order: by ``created`` (a time or ISO text), then ``_id``."""
    created = record.get("created")
    text = iso_utc(created) if isinstance(created, dt.datetime) else "" if created is None else str(created)
    return (text, str(record.get("_id")))


class MongoRecordStore(MongoConnection, RecordStore):
    """Provenance records, a collection per analysis unless ``collection`` holds them all."""

    analysis_field = "analysis_wrapper.analysis"
    """Record field holding the analysis name; used (and indexed) only when all analyses share one
    record ``collection``, to find the records of one analysis there."""
    collection: str | None
    jobs_collection: str
    leases_collection: str

    def _records(self, analysis: str) -> Any:
        return self._record_collection(self.collection or analysis)

    def _record_collection(self, name: str) -> Any:
        indexes = [IndexModel([("name", ASCENDING)]), IndexModel([("created", ASCENDING)])]
        if self.collection:
            indexes.append(IndexModel([(self.analysis_field, ASCENDING)]))
        self._ensure_indexes(name, indexes)
        return self._db()[name]

    def existing_fingerprints(self, analysis: str, fingerprints: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(fingerprints))
        docs = self._find_ids("look up records", self._records(analysis), ids, {"_id": 1}) if ids else []
        return {doc["_id"] for doc in docs}

    def _insert_new(self, action: str, records: Any, doc: dict[str, Any]) -> None:
        """Insert ``doc``; :class:`RecordExistsError` (and no pymongo error as context) if its id is taken."""
        try:
            self._run(action, lambda: records.insert_one(doc))
        except DuplicateKeyError:
            error = RecordExistsError(str(doc["_id"]))
        else:
            return
        raise error from None

    def _insert_record(self, analysis: str, fingerprint: str, record: dict[str, Any]) -> None:
        self._insert_new("insert a record", self._records(analysis), record)

    def _supersede_record(self, analysis: str, fingerprint: str, kept_id: str, kept: dict[str, Any]) -> None:
        """Two commands (DocumentDB has no multi-document transactions outside replica sets)."""
        records = self._records(analysis)
        self._insert_new("keep a superseded record", records, kept)
        self._run("remove a superseded record", lambda: records.delete_one({"_id": fingerprint}))

    def get_record(self, analysis: str, fingerprint: str) -> dict[str, Any] | None:
        docs = self._find("read a record", self._records(analysis), {"_id": fingerprint})
        return docs[0] if docs else None

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

    def _find_records(self, query: RecordQuery) -> list[dict[str, Any]]:
        """Oldest first by the records' ``created`` field, then ``_id``. Without an analysis, the
        records of every record collection in the database (all but the jobs and leases ones)."""
        find: dict[str, Any] = {}
        if query.analysis is not None and self.collection:
            find[self.analysis_field] = query.analysis
        if query.code_version is not None:
            find[f"{_CODE}.version"] = query.code_version
        conditions: list[dict[str, Any]] = []
        for name, value in query.parameters.items():
            path = f"{_CODE}.parameters.{name}"
            if value is None:
                # MongoDB's null-or-missing, spelled so that servers which get null wrong on positional
                # paths (``a.0.b``) agree with MongoDB: ``$type`` and ``$exists`` work on both.
                conditions.append({"$or": [{path: {"$type": "null"}}, {path: {"$exists": False}}]})
            else:
                find[path] = value
        if conditions:
            find["$and"] = conditions
        if not query.include_superseded:
            find["analysis_wrapper.superseded_by"] = None
        names = (
            [self.collection or query.analysis] if query.analysis is not None else self._record_collections()
        )
        sort = [("created", ASCENDING), ("_id", ASCENDING)]
        found = [
            doc
            for name in names
            for doc in self._find("read records", self._record_collection(name), find, sort=sort)
        ]
        return sorted(found, key=record_sort_key) if len(names) > 1 else found

    def capsule_records(
        self, analysis: str, code_url: str, code_version: str, input_urls: Sequence[str]
    ) -> list[dict[str, Any]]:
        """In the collection the capsule wrote (DocumentDB's): by code url, version and any input url."""
        urls, records = list(dict.fromkeys(input_urls)), self._records(analysis)
        # A projection takes no array index (``data_processes.0`` would name a field "0"): every process's.
        code = "processing.data_processes.code"
        wanted = {"_id": 1, "location": 1, f"{code}.input_data": 1, f"{code}.parameters": 1}
        return [
            doc
            for chunk in chunks(urls, CAPSULE_URL_CHUNK)
            for doc in self._find(
                "look up the capsule's records",
                records,
                {
                    f"{_CODE}.url": code_url,
                    f"{_CODE}.version": code_version,
                    f"{_CODE}.input_data.url": {"$in": list(chunk)},
                },
                wanted,
            )
        ]
