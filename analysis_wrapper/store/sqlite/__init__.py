"""The embedded default store: job registry, records and leases in one SQLite file.

One class per concept over one connection (:mod:`.connection`: WAL, busy timeout, schema, batched
statements): :mod:`.jobs`, :mod:`.records`, :mod:`.leases`; :class:`SqliteStore` is all three.
"""

from __future__ import annotations

from analysis_wrapper.store.base import Store
from analysis_wrapper.store.sqlite.jobs import SqliteJobRegistry
from analysis_wrapper.store.sqlite.leases import SqliteLeaseStore
from analysis_wrapper.store.sqlite.records import SqliteRecordStore


class SqliteStore(SqliteJobRegistry, SqliteRecordStore, SqliteLeaseStore, Store):
    """Job registry, record store and leases in one SQLite file (parent folders are created)."""

    def __repr__(self) -> str:
        return f"SqliteStore({str(self.path)!r})"
