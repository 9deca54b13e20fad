"""Job registry, records and leases in MongoDB or AWS DocumentDB, through pymongo.

One class per concept over one connection (:mod:`.connection`: the lazy client, TLS, credential-free
errors, round-trip counting): :mod:`.jobs`, :mod:`.records`, :mod:`.leases`; :class:`MongoStore` is
all three. Only commands DocumentDB has (``find``, ``insert``, ``update``, ``bulk_write``,
``find_one_and_update``, ``create_indexes``).
"""

from __future__ import annotations

from typing import Any

from analysis_wrapper.store.base import Store
from analysis_wrapper.store.mongo.jobs import MongoJobRegistry
from analysis_wrapper.store.mongo.leases import MongoLeaseStore
from analysis_wrapper.store.mongo.records import MongoRecordStore


class MongoStore(MongoJobRegistry, MongoRecordStore, MongoLeaseStore, Store):
    """Job registry, records and leases in MongoDB / AWS DocumentDB."""

    def __init__(
        self,
        uri: str | None = None,
        *,
        database: str = "analysis",
        collection: str | None = None,
        jobs_collection: str = "analysis_wrapper_jobs",
        leases_collection: str = "analysis_wrapper_leases",
        **options: Any,
    ):
        """``options`` go to the connection (``client``, ``tls``, ``tls_ca_file``, ...)."""
        super().__init__(uri, database=database, **options)
        self.collection = collection
        self.jobs_collection = jobs_collection
        self.leases_collection = leases_collection

    def __repr__(self) -> str:
        return f"MongoStore({self.uri or 'given client'!r}, database={self.database_name!r})"
