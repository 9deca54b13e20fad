"""The Dagster resource that hands out the job registry + record store for the configured backend.

SQLite (a file under ``DAGSTER_HOME``) is the embedded default; ``DOCDB_URI`` switches to pymongo
(MongoDB / AWS DocumentDB). The URI is passed as ``EnvVar("DOCDB_URI")`` so the Dagster UI shows
the variable's name, never its value (which may hold a password).
"""

from __future__ import annotations

import threading
from typing import Literal

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from analysis_wrapper.resources.store_base import RecordStore

_stores: dict[tuple[object, ...], RecordStore] = {}
_lock = threading.Lock()


class RecordStoreResource(ConfigurableResource):  # type: ignore[misc]
    """Job registry and provenance record store."""

    backend: Literal["sqlite", "mongodb"] = Field(
        default="sqlite", description="sqlite (embedded) or mongodb"
    )
    sqlite_path: str | None = Field(default=None, description="SQLite file, for the sqlite backend")
    uri: str | None = Field(default=None, description="mongodb:// URI (secret: pass as an EnvVar)")
    database: str = Field(default="analysis", description="Database holding the record collections")
    collection: str | None = Field(default=None, description="Record collection; default: the analysis name")
    tls: bool | None = Field(default=None, description="Use TLS (DocumentDB); unset: as the URI says")
    tls_ca_file: str | None = Field(default=None, description="CA bundle for TLS (DocumentDB)")
    timeout_ms: int = Field(default=10_000, description="Server selection timeout in milliseconds")

    def _cache_key(self) -> tuple[object, ...]:
        return (
            self.backend,
            self.sqlite_path,
            self.uri,
            self.database,
            self.collection,
            self.tls,
            self.tls_ca_file,
            self.timeout_ms,
        )

    def get_store(self) -> RecordStore:
        """The store for this configuration; one per process, shared by threads."""
        key = self._cache_key()
        with _lock:
            store = _stores.get(key)
            if store is None:
                store = _open_store(self)
                _stores[key] = store
            return store


def _open_store(config: RecordStoreResource) -> RecordStore:
    if config.backend == "sqlite":
        from pathlib import Path

        from analysis_wrapper.resources.sqlite_store import SqliteRecordStore

        if not config.sqlite_path:
            raise ValueError("RecordStoreResource(backend='sqlite') needs sqlite_path")
        return SqliteRecordStore(Path(config.sqlite_path))
    from analysis_wrapper.resources.mongo_store import MongoRecordStore

    # Inside a Dagster run the EnvVar is resolved already; used directly (CLI, sensors' helpers) it is not.
    uri = config.uri.get_value() if isinstance(config.uri, EnvVar) else config.uri
    if not uri:
        raise ValueError("RecordStoreResource(backend='mongodb') needs uri (DOCDB_URI)")
    return MongoRecordStore(
        uri,
        database=config.database,
        collection=config.collection,
        tls=config.tls,
        tls_ca_file=config.tls_ca_file,
        server_selection_timeout_ms=config.timeout_ms,
    )


def close_all_stores() -> None:
    """Close every store opened in this process (tests use it between instances)."""
    with _lock:
        for store in _stores.values():
            store.close()
        _stores.clear()
