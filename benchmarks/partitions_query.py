"""Issue 20, item 5: the GraphQL query of the UI's Partitions tab against the number of partitions.

A fresh ``DAGSTER_HOME`` (the shipped ``dagster_home/dagster.yaml``) whose trivial analysis's dynamic
partitions hold N keys shaped like the package's (``<asset>-<20 hex>``, 34 characters), 90% of them
materialized; ``dagster-webserver`` on it (code location ``benchmarks.daemon_defs``); then the query the
Partitions tab sends (``PartitionHealthQuery``, verbatim from dagster-webserver's bundled JS: the asset's
``partitionKeysByDimension`` and ``assetPartitionStatuses``) POSTed to ``/graphql``, timed to the last byte
of the reply and sized. The keys grow from the smaller size to the larger in the same home, under the same
webserver, as a registry grows.

Each size: one query right after the growth (it brings Dagster's asset status cache up to date: the new
materializations are read once) and then ``REPEATS`` more; the value is their median, the first is in the
note. The ratio is the larger size's median over the smaller's.

Writing the partitions and materializations: the keys through ``instance.add_dynamic_partitions`` in
chunks of 1,000 (as the package adds them); the materializations as Dagster stores a runless
``AssetMaterialization(asset_key, partition=k)`` (``instance.report_runless_asset_event``), but written
in bulk: one such event is reported through the instance to get its stored row, then the same row with
each key in place of the first is inserted with ``executemany`` into the event log's index shard (the
``event_logs`` table the status cache reads), and one more event is reported through the instance last,
so the asset's latest materialization is the newest row. One event at a time through the instance costs
about a millisecond each (over 15 minutes at 1,000,000).
"""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from benchmarks import trivial
from benchmarks.common import REPO_ROOT, Entry, RunOptions, compared, entry, median
from benchmarks.webserver import PARTITION_HEALTH_QUERY, dagster_ui

SIZES_FULL = (100_000, 1_000_000)
SIZES_QUICK = (1_000, 10_000)
MATERIALIZED_SHARE = 0.9
REPEATS = 3
PARTITION_CHUNK = 1_000
INSERT_CHUNK = 50_000
EVENT_COLUMNS = ("run_id", "event", "dagster_event_type", "timestamp", "step_key", "asset_key", "partition")


def key(i: int) -> str:
    return f"asset_{i:07d}-{hashlib.sha1(str(i).encode()).hexdigest()[:20]}"


def materialized(i: int) -> bool:
    """90% of the partitions: all but every tenth."""
    return i % 10 != 9


class Home:
    """The Dagster home of the benchmark and what it holds so far."""

    def __init__(self, root: Path) -> None:
        self.home = root / "dagster_home"
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
        self.size = 0
        self.template: tuple[str, dict[str, Any]] | None = None  # (its key, its event_logs row)

    def grow(self, size: int) -> float:
        """Partitions (and 90% materialized) up to ``size``; returns seconds."""
        from dagster import AssetKey, AssetMaterialization, DagsterInstance
        from dagster._core.instance.ref import InstanceRef

        start = time.perf_counter()
        asset_key = AssetKey(trivial.analysis.asset_name)
        instance = DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))
        try:
            keys = [key(i) for i in range(self.size, size)]
            for lo in range(0, len(keys), PARTITION_CHUNK):
                instance.add_dynamic_partitions(
                    trivial.analysis.partitions_name, keys[lo : lo + PARTITION_CHUNK]
                )
            done = [key(i) for i in range(self.size, size) if materialized(i)]
            index_db = Path(instance.event_log_storage.path_for_shard("index"))  # type: ignore[attr-defined]

            def report(k: str) -> None:
                instance.report_runless_asset_event(AssetMaterialization(asset_key, partition=k))

            if self.template is None:
                report(done[0])
                self.template = (done[0], _row(index_db, asset_key.to_string(), done[0]))
                done = done[1:]
            _insert_like(index_db, self.template, done[:-1])
            report(done[-1])  # the newest row is a real one: the asset's latest materialization
        finally:
            instance.dispose()
        self.size = size
        return time.perf_counter() - start


def _row(index_db: Path, asset_key: str, partition: str) -> dict[str, Any]:
    with contextlib.closing(sqlite3.connect(index_db)) as conn:
        found = conn.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM event_logs WHERE asset_key = ? AND partition = ? "
            "AND dagster_event_type = 'ASSET_MATERIALIZATION'",
            [asset_key, partition],
        ).fetchone()
    if found is None:
        raise RuntimeError(f"no materialization row for {partition} in {index_db}")
    return dict(zip(EVENT_COLUMNS, found, strict=True))


def _insert_like(index_db: Path, template: tuple[str, dict[str, Any]], keys: list[str]) -> None:
    """The template row once per key (key replaced in the serialized event and the partition column)."""
    old, row = template
    columns = ", ".join(EVENT_COLUMNS)
    sql = f"INSERT INTO event_logs ({columns}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    with contextlib.closing(sqlite3.connect(index_db, timeout=60)) as conn:
        for lo in range(0, len(keys), INSERT_CHUNK):
            with conn:
                conn.executemany(
                    sql,
                    (
                        [
                            {**row, "event": row["event"].replace(old, k), "partition": k}[c]
                            for c in EVENT_COLUMNS
                        ]
                        for k in keys[lo : lo + INSERT_CHUNK]
                    ),
                )


def _env(root: Path, home: Path) -> dict[str, str]:
    from analysis_wrapper_tests.environment import scrubbed_environ

    env = scrubbed_environ()
    env.update(
        {
            "DAGSTER_HOME": str(home),
            "DISPATCH_INBOX": str(root / "inbox"),
            "RESULTS_ROOT": str(root / "results"),
            "SENSOR_START_STOPPED": "1",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    return env


def _check(data: dict[str, Any], size: int) -> int:
    """The reply holds every key and the materialized ones; returns how many are materialized."""
    node = data["assetNodeOrError"]
    (dimension,) = node["partitionKeysByDimension"]
    if len(dimension["partitionKeys"]) != size:
        raise RuntimeError(f"the query returned {len(dimension['partitionKeys'])} keys for {size}")
    count = len(node["assetPartitionStatuses"]["materializedPartitions"])
    expected = sum(1 for i in range(size) if materialized(i))
    if count != expected:
        raise RuntimeError(f"the query shows {count} materialized partitions, {expected} written")
    return count


def run(options: RunOptions) -> list[Entry]:
    root = Path(options.workdir) / "partitions_query"
    sizes = SIZES_QUICK if options.quick else SIZES_FULL
    home = Home(root)
    asset_path = [trivial.analysis.asset_name]
    variables = {"assetKey": {"path": asset_path}}
    results: dict[int, tuple[float, float, int]] = {}  # size: (median s, first s, bytes)
    entries: list[Entry] = []
    with dagster_ui(root, _env(root, home.home), asset_path, daemon=False) as ui:
        for size in sizes:
            options.log(f"  {size:,} partitions ({MATERIALIZED_SHARE:.0%} materialized): writing")
            written_s = home.grow(size)
            options.log(f"    written in {written_s:.1f} s; PartitionHealthQuery x {1 + REPEATS}")
            first = ui.graphql(PARTITION_HEALTH_QUERY, variables)
            shown = _check(first.data, size)
            again = [ui.graphql(PARTITION_HEALTH_QUERY, variables) for _ in range(REPEATS)]
            seconds = median([r.seconds for r in again])
            results[size] = (seconds, first.seconds, first.bytes)
            entries.append(
                entry(
                    f"Partitions tab query (PartitionHealthQuery) at {size:,} partitions",
                    seconds,
                    "s",
                    note=(
                        f"median of {REPEATS}; reply {first.bytes / 1e6:.1f} MB; first query after the "
                        f"growth (status cache brought up to date) {first.seconds:.2f} s; {shown:,} shown "
                        f"materialized; dagster-webserver over HTTP; written in {written_s:.0f} s"
                    ),
                )
            )
            entries.append(
                entry(f"Partitions tab query reply at {size:,} partitions", first.bytes / 1e6, "MB")
            )
    small, large = min(sizes), max(sizes)
    entries.append(
        compared(
            f"Partitions tab query: {large:,} vs {small:,} partitions",
            results[large][0],
            "s",
            f"the query at {small:,} partitions",
            results[small][0],
            "time ratio",
            note=(
                f"reply {results[large][2] / 1e6:.1f} vs {results[small][2] / 1e6:.1f} MB; "
                f"{large // small}x the partitions; no target (the issue asks for the figures)"
            ),
        )
    )
    return entries
