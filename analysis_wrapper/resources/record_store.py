"""The Dagster resource that hands out the store (job registry, records, leases) for the configured backend.

SQLite (a file under ``DAGSTER_HOME``) is the embedded default; ``DOCDB_URI`` switches to pymongo
(MongoDB / AWS DocumentDB). The URI is passed as ``EnvVar("DOCDB_URI")`` so the Dagster UI shows
the variable's name, never its value (which may hold a password).
"""

from __future__ import annotations

import threading
from typing import Literal

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from analysis_wrapper.lifecycle import JobLifecycle
from analysis_wrapper.store.base import Store

_stores: dict[tuple[object, ...], Store] = {}
_lock = threading.Lock()


class StoreResource(ConfigurableResource):  # type: ignore[misc]
    """Where jobs, records and leases are kept: SQLite (embedded) or MongoDB / DocumentDB."""

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
    busy_timeout_s: float = Field(
        default=30.0, description="SQLite: seconds a write waits for another process's lock"
    )

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
            self.busy_timeout_s,
        )

    lease_ttl_s: float = Field(
        default=60.0,
        description="Leases (fingerprint being computed, run alive) expire this long after renewal",
    )

    def lifecycle(self) -> JobLifecycle:
        """The job lifecycle over this store: the only way job states change."""
        return JobLifecycle(self.get_store())

    def get_store(self) -> Store:
        """The store for this configuration; one per process, shared by threads."""
        key = self._cache_key()
        with _lock:
            store = _stores.get(key)
            if store is None:
                store = _open_store(self)
                _stores[key] = store
            return store


def _open_store(config: StoreResource) -> Store:
    if config.backend == "sqlite":
        from pathlib import Path

        from analysis_wrapper.store.sqlite import SqliteStore

        if not config.sqlite_path:
            raise ValueError("StoreResource(backend='sqlite') needs sqlite_path")
        return SqliteStore(Path(config.sqlite_path), busy_timeout_s=config.busy_timeout_s)
    from analysis_wrapper.store.mongo import MongoStore

    # Inside a Dagster run the EnvVar is resolved already; used directly (CLI, sensors' helpers) it is not.
    uri = config.uri.get_value() if isinstance(config.uri, EnvVar) else config.uri
    if not uri:
        raise ValueError("StoreResource(backend='mongodb') needs uri (DOCDB_URI)")
    return MongoStore(
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
