"""Leases in MongoDB / DocumentDB: one collection, ``_id`` = the lease key.

A claim is one upsert whose filter matches only a free, expired or own lease, so the unique ``_id``
index refuses a second claimant (``DuplicateKeyError``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from analysis_wrapper.store.base import Lease, LeaseStore
from analysis_wrapper.store.fields import claim_tokens, lease_from_fields, to_utc
from analysis_wrapper.store.mongo.connection import MongoConnection


class MongoLeaseStore(MongoConnection, LeaseStore):
    """Claims unique per key in ``leases_collection``."""

    leases_collection: str

    def _leases(self) -> Any:
        return self._db()[self.leases_collection]

    def claim_lease(self, lease: Lease, now: dt.datetime, *, replacing_token: str | None = None) -> bool:
        leases = self._leases()
        query = {
            "_id": lease.key,
            "$or": [
                {"expires_at": {"$lt": to_utc(now)}},
                {"token": {"$in": claim_tokens(lease, replacing_token)}},
            ],
        }
        holder = {"run_id": lease.run_id, "host": lease.host, "pid": int(lease.pid), "token": lease.token}
        update = {"$set": {**holder, "expires_at": to_utc(lease.expires_at)}}
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
                {"_id": key, "token": token}, {"$set": {"expires_at": to_utc(expires_at)}}
            ),
        )
        return int(result.matched_count) > 0

    def release_lease(self, key: str, token: str) -> None:
        leases = self._leases()
        self._run("release a lease", lambda: leases.delete_one({"_id": key, "token": token}))

    def get_leases(self, keys: Iterable[str]) -> dict[str, Lease]:
        ids = list(dict.fromkeys(keys))
        docs = self._find_ids("look up leases", self._leases(), ids, None) if ids else []
        return {doc["_id"]: lease_from_fields({"key": doc.pop("_id"), **doc}) for doc in docs}
