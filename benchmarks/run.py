"""Run the benchmarks, print the table, write ``benchmarks/results.json``.

    python -m benchmarks.run [--quick] [--only NAME,...] [--profile] [--output PATH] [--keep]

Every figure is measured side by side with what it is compared to, in the same run. ``--quick`` uses
small sizes (CI keeps the benchmark working with it; no timing is asserted anywhere). A benchmark that
fails becomes an ``error`` row and the others go on; a missing tool gives ``not installed`` rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.util
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import BENCH_DIR, FULL, QUICK, Entry, RunOptions, machine_info, pending


@dataclass(frozen=True)
class Benchmark:
    name: str
    item: str
    target: str  # "module:function"
    needs_sensors: bool = False

    def function(self) -> Callable[[RunOptions], list[Entry]]:
        module, _, attr = self.target.partition(":")
        fn: Callable[[RunOptions], list[Entry]] = getattr(importlib.import_module(module), attr)
        return fn


BENCHMARKS = (
    Benchmark(
        "sensor_tick", "1 + 5a. sensor tick vs registry size, peak RSS", "benchmarks.sensor_tick:run", True
    ),
    Benchmark(
        "sensor_tick_mongo",
        "1. sensor tick vs registry size, store on MongoDB (SecantusDB)",
        "benchmarks.sensor_tick:run_mongo",
        True,
    ),
    Benchmark("skip_check", "2. skip check vs the capsule's way, SQLite", "benchmarks.skip_check:run"),
    Benchmark(
        "skip_check_mongo",
        "2. skip check vs the capsule's way, MongoDB (SecantusDB)",
        "benchmarks.skip_check:run_mongo",
    ),
    Benchmark("overhead_trivial", "3a. overhead per job, trivial jobs", "benchmarks.overhead:run_trivial"),
    Benchmark("overhead_isi", "3a. overhead per job, isi_violations jobs", "benchmarks.overhead:run_isi"),
    Benchmark("daemon", "3b. sensor + daemon, trivial jobs/s", "benchmarks.daemon:run", True),
    Benchmark(
        "daemon_postgres",
        "3b. sensor + daemon, Dagster storage in PostgreSQL vs SQLite",
        "benchmarks.daemon:run_postgres",
        True,
    ),
    Benchmark("upload", "4. upload vs awscli and s5cmd", "benchmarks.upload:run"),
    Benchmark("memory_run", "5b. peak RSS of analysis-wrapper run", "benchmarks.memory:run"),
    Benchmark(
        "dispatch", "6. dispatch of 10,000 assets vs the AIND dispatcher's way", "benchmarks.dispatch:run"
    ),
    Benchmark(
        "ui_backfill",
        "20.5 UI backfill (launchPartitionBackfill) vs analysis-wrapper run",
        "benchmarks.ui_backfill:run",
    ),
    Benchmark(
        "partitions_query",
        "20.5 the Partitions tab's GraphQL query vs partition count",
        "benchmarks.partitions_query:run",
    ),
)
NAMES = [b.name for b in BENCHMARKS]


def sensors_available() -> str | None:
    """None when ``analysis_wrapper.sensors`` has what the sensor benchmarks use; else why not."""
    if importlib.util.find_spec("analysis_wrapper.sensors") is None:
        return "pending: needs analysis_wrapper.sensors"
    try:
        module = importlib.import_module("analysis_wrapper.sensors")
    except Exception as exc:
        return f"pending: analysis_wrapper.sensors does not import ({type(exc).__name__}: {exc})"
    missing = [n for n in ("build_inbox_sensor", "SensorSettings", "InboxCursor") if not hasattr(module, n)]
    if missing:
        return f"pending: needs analysis_wrapper.sensors.{', '.join(missing)}"
    return None


def pending_rows(bench: Benchmark, reason: str) -> list[Entry]:
    if bench.name == "sensor_tick":
        return [
            pending(
                "1. sensor tick at 1k/10k/100k/1M registry + 1,000 new files",
                reason,
                "s",
                "< 5 s, 1M ≤ 1.5x 1k",
            ),
            pending("5a. sensor tick at 100,000 jobs, peak RSS", reason, "MB"),
        ]
    if bench.name == "sensor_tick_mongo":
        return [pending("1. sensor tick, store on MongoDB (SecantusDB)", reason, "s", "100k ≤ 1.5x 1k")]
    if bench.name == "daemon_postgres":
        return [pending("3b. sensor + daemon, Dagster storage in PostgreSQL vs SQLite", reason, "s/job")]
    return [pending("3b. inbox sensor + daemon (queued run coordinator), trivial jobs/s", reason, "jobs/s")]


# ---- formatting ----------------------------------------------------------------------------------------
def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in {"queries", "files"} or abs(value) >= 100 or (float(value).is_integer() and abs(value) >= 1):
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def fmt_ratio(entry: Entry) -> str:
    if entry.ratio is None:
        return ""
    r = entry.ratio
    number = f"{r:,.0f}" if r >= 100 else f"{r:.3g}"
    return {
        "speed-up": f"{number}x faster",
        "reduction": f"{number}x fewer",
        "time ratio": f"{number}x the time",
        "value ratio": f"{number}x",
    }.get(entry.ratio_kind or "", number)


def table(entries: Sequence[Entry]) -> str:
    header = ("figure", "value", "compared with", "its value", "ratio", "target", "met", "note")
    rows = []
    for e in entries:
        met = "" if e.met is None else ("yes" if e.met else "NO")
        value = fmt(e.value, e.unit) if e.status == "ok" else e.status
        compared_value = fmt(e.compared_value, e.unit) if e.compared_value is not None else ""
        rows.append(
            (
                e.name,
                value,
                e.compared_name or "",
                compared_value,
                fmt_ratio(e),
                e.target or "",
                met,
                e.note or "",
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # the note column is last: never padded
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (under 2 minutes)")
    parser.add_argument("--only", default="", help=f"comma-separated benchmarks: {', '.join(NAMES)}")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile our side; reports in benchmarks/.cache/profiles"
    )
    parser.add_argument("--output", type=Path, default=BENCH_DIR / "results.json", help="results JSON")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (printed)")
    args = parser.parse_args(argv)

    chosen = [n.strip() for n in args.only.split(",") if n.strip()] or NAMES
    unknown = [n for n in chosen if n not in NAMES]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    workdir = Path(tempfile.mkdtemp(prefix="aw-bench-"))
    options = RunOptions(
        sizes=QUICK if args.quick else FULL, quick=args.quick, profile=args.profile, workdir=workdir, log=log
    )
    started = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    entries: list[Entry] = []
    no_sensors = sensors_available()
    try:
        for bench in BENCHMARKS:
            if bench.name not in chosen:
                continue
            log(f"[{bench.name}] {bench.item}")
            bench_clock = time.perf_counter()
            if bench.needs_sensors and no_sensors:
                rows = pending_rows(bench, no_sensors)
                log(f"  {no_sensors}")
            else:
                try:
                    rows = bench.function()(options)
                except Exception as exc:
                    traceback.print_exc(file=sys.stderr)
                    message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
                    rows = [
                        Entry(
                            name=bench.item,
                            value=None,
                            unit="",
                            status="error",
                            note=f"{type(exc).__name__}: {message}",
                        )
                    ]
            for row in rows:
                row.benchmark = bench.name
            entries.extend(rows)
            log(f"  ({time.perf_counter() - bench_clock:.1f} s)")
    finally:
        if args.keep:
            log(f"scratch folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    duration = time.perf_counter() - clock
    result = {
        "date": started.isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "benchmarks": chosen,
        "duration_s": round(duration, 1),
        "profiled": args.profile,
        "machine": machine_info(),
        "entries": [e.as_json() for e in entries],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    machine = result["machine"]
    print(
        f"analysis_wrapper benchmarks ({result['mode']}), {result['date']}, "
        f"{machine['cpus']} CPUs ({machine['cpu_model']}), {machine['memory_gb']} GB RAM, "
        f"{duration:.0f} s"
    )
    print(table(entries))
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
