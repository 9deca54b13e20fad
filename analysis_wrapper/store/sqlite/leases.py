"""Leases in SQLite: the ``leases`` table, one row per key; a claim is one upsert."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from analysis_wrapper.store.base import Lease, LeaseStore
from analysis_wrapper.store.fields import claim_tokens, iso_utc, lease_from_fields
from analysis_wrapper.store.sqlite.connection import SqliteConnection

_LEASE_FIELDS = ("key", "run_id", "host", "pid", "token", "expires_at")


class SqliteLeaseStore(SqliteConnection, LeaseStore):
    """Claims unique per key in the ``leases`` table."""

    def claim_lease(self, lease: Lease, now: dt.datetime, *, replacing_token: str | None = None) -> bool:
        tokens = claim_tokens(lease, replacing_token)
        # One statement: insert, or take over a row that expired or that we (or a dead holder) hold.
        cursor = self._execute(
            self._connection(),
            "INSERT INTO leases (key, run_id, host, pid, token, expires_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id, host = excluded.host, "
            "pid = excluded.pid, token = excluded.token, expires_at = excluded.expires_at "
            f"WHERE leases.expires_at < ? OR leases.token IN ({', '.join('?' * len(tokens))})",
            [
                lease.key,
                lease.run_id,
                lease.host,
                int(lease.pid),
                lease.token,
                iso_utc(lease.expires_at),
                iso_utc(now),
                *tokens,
            ],
        )
        return cursor.rowcount > 0

    def renew_lease(self, key: str, token: str, expires_at: dt.datetime) -> bool:
        cursor = self._execute(
            self._connection(),
            "UPDATE leases SET expires_at = ? WHERE key = ? AND token = ?",
            [iso_utc(expires_at), key, token],
        )
        return cursor.rowcount > 0

    def release_lease(self, key: str, token: str) -> None:
        self._execute(self._connection(), "DELETE FROM leases WHERE key = ? AND token = ?", [key, token])

    def get_leases(self, keys: Iterable[str]) -> dict[str, Lease]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        sql = f"SELECT {', '.join(_LEASE_FIELDS)} FROM leases WHERE"
        rows = self._select_in(self._connection(), sql, "key", wanted)
        return {row[0]: lease_from_fields(dict(zip(_LEASE_FIELDS, row, strict=True))) for row in rows}
