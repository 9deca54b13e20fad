"""Which results are new to a summary: the result asset's materializations after its cursor.

An update keeps two storage ids: ``cursor``, the last materialization it read, and ``settled``, the last
one that was already ``SETTLE_S`` old when it was read. The next update reads after ``settled``, not
after ``cursor``, and skips the jobs it already holds. Why: PostgreSQL (Dagster's event storage in a
deployment) hands out an event's id when its writer inserts it, and the writer commits a moment later;
with two runs writing at once, a summary can read an event with a higher id while one with a lower id is
not yet committed, and a plain cursor would then be past it for good. Its materialization still wakes the
summary's automation; re-reading the last minute is what lets that update take the job in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

EVENTS_PAGE = 1000
SETTLE_S = 60.0
"""How long an update keeps re-reading materializations after it first read past them: far longer than
an event's insert takes to commit, short enough that a re-read is a minute of results at most."""


@dataclass(frozen=True)
class SummaryCursor:
    """Where the previous update stopped: ``last`` read and ``settled`` (see the module docstring)."""

    last: int | None = None
    settled: int | None = None

    @classmethod
    def from_state(cls, state: dict[str, object]) -> SummaryCursor:
        last = state.get("cursor")
        settled = state.get("settled", last)  # a summary written before ``settled``: nothing re-read
        return cls(last if isinstance(last, int) else None, settled if isinstance(settled, int) else None)


def new_fingerprints(
    instance: DagsterInstance,
    result_key: AssetKey,
    cursor: SummaryCursor,
    held: set[tuple[str, str]],
    now: float | None = None,
) -> tuple[dict[str, str], SummaryCursor]:
    """Partition -> fingerprint of each partition whose latest materialization the summary has not
    taken in (``held``: its rows' partition and fingerprint pairs), and the cursor to store with it."""
    read_at = time.time() if now is None else now
    latest: dict[str, tuple[str, int]] = {}
    last, settled = cursor.last, cursor.settled
    page_cursor = None
    while True:
        page = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=result_key, after_storage_id=cursor.settled),
            limit=EVENTS_PAGE,
            cursor=page_cursor,
            ascending=True,
        )
        for item in page.records:
            last = item.storage_id if last is None else max(last, item.storage_id)
            if item.timestamp < read_at - SETTLE_S:
                settled = item.storage_id
            materialization = item.asset_materialization
            if materialization is None or materialization.partition is None:
                continue
            value = materialization.metadata.get("fingerprint")
            fingerprint = str(
                getattr(value, "value", value) or (materialization.tags or {}).get("dagster/data_version", "")
            )
            if fingerprint:
                latest[materialization.partition] = (fingerprint, item.storage_id)
        if not page.has_more:
            break
        page_cursor = page.cursor
    found = {
        partition: fingerprint
        for partition, (fingerprint, storage_id) in latest.items()
        if not (cursor.last is not None and storage_id <= cursor.last and (partition, fingerprint) in held)
    }
    return found, SummaryCursor(last, settled)
