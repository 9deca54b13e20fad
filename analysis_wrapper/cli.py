"""``analysis-wrapper``: one-shot use and queries, on the same registry, stores and Dagster instance.

* ``submit PATH...``: validate job files (or folders of them) and register them as partitions;
* ``run [PATH...]``: register, then materialize every pending partition in-process, in batch runs of
  ``--batch-size`` jobs (1: one run of the result asset per job); exits non-zero only when a job
  failed or a file was rejected, after processing all the rest;
* ``status`` / ``results``: the job registry and the records, as a table or ``--json``.

The terminal gets one line per job and per error: Dagster's own event log (every step event and stack
trace) goes to the run's log in the Dagster instance, and a failed job's line names its reason (the root
cause) and where that log is. ``--verbose`` prints Dagster's log and full traces here too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from analysis_wrapper.cli_context import Context, open_context
from analysis_wrapper.settings import SettingsError
from analysis_wrapper.tags import BATCH_SIZE_TAG, HOST_TAG, PID_TAG, SOURCE_TAG

log = logging.getLogger("analysis_wrapper.cli")

DEFAULT_BATCH_SIZE = 20
"""Jobs per in-process run of ``run``: a Dagster run costs about 0.2 s of its own."""
OUTPUTS_WIDTH = 70
"""Characters of a record's outputs ``results`` shows (then an ellipsis; ``--full``: all of them)."""
ERROR_WIDTH = 60
"""Characters of a job's last error ``status`` shows (then an ellipsis; ``--full``: all of it)."""


def _register_paths(
    ctx: Context, paths: Sequence[str], analysis: str | None, out: TextIO
) -> tuple[list[Any], int]:
    """Validate and register job files; return (jobs registered or known, number rejected)."""
    from analysis_wrapper.registration import add_partitions, find_job_files, prepare_files, register_jobs

    if analysis and analysis not in ctx.analyses:
        raise SystemExit(
            f"error: --analysis {analysis!r} is not served here (known: {', '.join(ctx.analyses)})"
        )
    files, missing = find_job_files(Path(p) for p in paths)
    prepared = prepare_files(files, ctx.analyses, analysis)
    rejected = missing + prepared.rejected
    for item in rejected:
        print(f"REJECTED {item.message}", file=out)
    jobs = []
    for name, analysis_jobs in prepared.jobs.items():
        registration = register_jobs(analysis_jobs, ctx.store)
        add_partitions(ctx.instance, ctx.analyses[name].partitions_name, registration.keys)
        outcome = registration.outcome
        for job in analysis_jobs:
            verb = (
                "registered"
                if job.partition_key in outcome.added
                else ("updated" if job.partition_key in outcome.changed else "known")
            )
            log.info("%s %s %s (%s)", verb, name, job.partition_key, job.source)
        jobs.extend(analysis_jobs)
    return jobs, len(rejected)


def _pending_registered(ctx: Context, analysis: str | None) -> list[Any]:
    """Every registered job, rebuilt with the current analysis version (its fingerprint may change)."""
    from analysis_wrapper.job_file import JobFileError
    from analysis_wrapper.partition_run import job_of_entry

    jobs = []
    for entry in ctx.store.list_jobs(analysis):
        spec = ctx.analyses.get(entry.analysis)
        if spec is None:
            continue
        try:
            jobs.append(job_of_entry(entry, spec))
        except (JobFileError, ValueError) as exc:
            print(f"SKIPPED registered job {entry.partition_key}: {exc}", file=sys.stderr)
    return jobs


class Progress:
    """A progress bar on a terminal; a line per job otherwise."""

    def __init__(self, total: int, stream: TextIO):
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()

    def step(self, line: str) -> None:
        self.done += 1
        if self.tty:
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} {line[:60]:<60}")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        else:
            print(line, file=self.stream, flush=True)


def _run_config(ctx: Context, analysis: str, args: argparse.Namespace) -> dict[str, Any]:
    op_config: dict[str, Any] = {"force": bool(args.force)}
    if args.dry_run is not None:
        op_config["dry_run"] = args.dry_run
    return {"ops": {ctx.built[analysis].analysis.asset_name: {"config": op_config}}}


def cmd_submit(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    jobs, rejected = _register_paths(ctx, args.paths, args.analysis, sys.stdout)
    for job in jobs:
        print(
            f"registered {job.analysis} {job.partition_key} fingerprint {job.fingerprint[:16]} ({job.source})"
        )
    print(f"{len(jobs)} job(s) registered, {rejected} file(s) rejected")
    return 1 if rejected else 0


def _refuse_dirty_post(ctx: Context, args: argparse.Namespace) -> None:
    """Fail fast, before any job, when the run would post from a dirty tree (every job would fail)."""
    from analysis_wrapper.provenance import check_may_post

    runtime = ctx.defs.resources["runtime"]
    check_may_post(runtime.code_state(), _dry_run(ctx, args.dry_run), runtime.allow_dirty)


def cmd_run(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    _refuse_dirty_post(ctx, args)
    if args.paths:
        jobs, rejected = _register_paths(ctx, args.paths, args.analysis, sys.stdout)
    else:
        jobs, rejected = _pending_registered(ctx, args.analysis), 0
    unique = list({(j.analysis, j.partition_key): j for j in jobs}.values())
    recorded: set[str] = set()
    for name in {j.analysis for j in unique}:
        recorded |= ctx.store.existing_fingerprints(
            name, [j.fingerprint for j in unique if j.analysis == name]
        )
    counts = {"done": 0, "already done": 0, "elsewhere": 0, "dry run": 0, "failed": 0}
    progress = Progress(len(unique), sys.stdout)
    due: dict[str, list[Any]] = {}
    for job in unique:
        if job.fingerprint in recorded and not args.force:
            counts["already done"] += 1
            progress.step(f"already done  {job.analysis} {job.partition_key}")
        else:
            due.setdefault(job.analysis, []).append(job)
    size = max(1, args.batch_size)
    for name, jobs_of_analysis in due.items():
        for start in range(0, len(jobs_of_analysis), size):
            chunk = jobs_of_analysis[start : start + size]
            outcomes = _materialize(ctx, name, chunk, args)
            for job in chunk:
                outcome, detail = outcomes[job.partition_key]
                counts[outcome] += 1
                progress.step(f"{outcome:<13} {job.analysis} {job.partition_key} {detail}")
    # "elsewhere": another run held the job's fingerprint and ended without a record (shown when it happened).
    summary = ", ".join(f"{n} {label}" for label, n in counts.items() if n or label != "elsewhere")
    print(f"{len(unique)} job(s): {summary}; {rejected} file(s) rejected")
    if not unique and not rejected:
        print("nothing to run: no job files given and no registered job is pending")
    return 1 if counts["failed"] or rejected else 0


def _materialize(
    ctx: Context, analysis: str, jobs: Sequence[Any], args: argparse.Namespace
) -> dict[str, tuple[str, str]]:
    """Run ``jobs`` of ``analysis`` in one in-process Dagster run (one job: a run of the result
    asset's partition; several: a batch run); each job's outcome and detail, read from the run's
    materializations (what this run did), waiting for jobs another run was computing."""
    import uuid

    from analysis_wrapper.batch import batch_run_config
    from analysis_wrapper.ownership import heartbeat, this_host

    spec = ctx.built[analysis].analysis
    loggers = run_loggers(args.verbose)
    run_id = str(uuid.uuid4())
    # Host and pid say where this in-process run lives; its heartbeat lease says it is alive. Killed,
    # it is failed by the lost-run check of any daemon, and its slot in the run queue is freed.
    tags = {SOURCE_TAG: "cli", HOST_TAG: this_host(), PID_TAG: str(os.getpid())}
    store = ctx.defs.resources["store"]
    heartbeat(ctx.store, run_id, store.lease_ttl_s)
    try:
        if len(jobs) == 1:
            result = ctx.defs.resolve_job_def(spec.job_name).execute_in_process(
                instance=ctx.instance,
                partition_key=jobs[0].partition_key,
                run_config={**_run_config(ctx, analysis, args), "loggers": loggers},
                raise_on_error=False,
                run_id=run_id,
                tags=tags,
            )
        else:
            result = ctx.defs.resolve_job_def(spec.batch_job_name).execute_in_process(
                instance=ctx.instance,
                run_config={
                    **batch_run_config(spec, [j.partition_key for j in jobs], bool(args.force), args.dry_run),
                    "loggers": loggers,
                },
                raise_on_error=False,
                run_id=run_id,
                tags={**tags, BATCH_SIZE_TAG: str(len(jobs))},
            )
    finally:
        _end_heartbeat(run_id, store.lease_ttl_s)
    statuses = _statuses(result)
    outcomes: dict[str, tuple[str, str]] = {}
    where = log_location(ctx.instance, result.run_id)
    for job in jobs:
        status, location = statuses.get(job.partition_key, ("", ""))
        if status == "recorded":
            outcomes[job.partition_key] = ("done", location)
        elif status.startswith("dry run"):
            outcomes[job.partition_key] = ("dry run", "(nothing posted; DRY_RUN=0 to post)")
        elif status.startswith("skipped"):
            outcomes[job.partition_key] = _wait_for_other_run(
                ctx, job, status, bool(args.force), args.dry_run
            )
        else:
            reason = _failure_reason(ctx, analysis, job.partition_key, result)
            outcomes[job.partition_key] = ("failed", f"{reason} [{where}]")
    return outcomes


def _end_heartbeat(run_id: str, ttl_s: float) -> None:
    """Release the run's heartbeat lease; a store that does not answer now (locked, unreachable) does not
    stop the command: the lease expires by itself after ``ttl_s`` and this process is gone by then."""
    from analysis_wrapper.ownership import end_heartbeat
    from analysis_wrapper.store.base import StoreError

    try:
        end_heartbeat(run_id)
    except StoreError as exc:
        log.warning(
            "run %s: its heartbeat lease was not released (%s); it expires in %.0f s", run_id, exc, ttl_s
        )


def run_loggers(verbose: bool) -> dict[str, Any]:
    """Run config of an in-process run's loggers: Dagster's console logger prints only under
    ``--verbose``. Every event (stack traces included) is stored in the run's event log in the
    instance either way (the Dagster UI and ``log_location`` show it); the CLI prints its own lines."""
    return {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}}


def log_location(instance: Any, run_id: str) -> str:
    """Where the full log of run ``run_id`` is: its run page in the Dagster UI (``dagster dev`` on the
    same DAGSTER_HOME) and, for local compute logs, the folder of its captured output."""
    where = f"full log: Dagster run {run_id}, UI /runs/{run_id}"
    folder = Path(instance.storage_directory()) / run_id / "compute_logs"
    return f"{where}, output {folder}" if folder.is_dir() else where


def error_line(error: Any) -> str:
    """The root cause of a Dagster error (a ``SerializableErrorInfo``) in one line: the innermost
    ``cause`` (Dagster wraps a failing IO manager in DagsterExecutionHandleOutputError, a failing step
    in DagsterExecutionStepExecutionError), as ``ClassName: first line of its message``."""
    while error.cause is not None:
        error = error.cause
    text = (error.message or "").strip()
    head, sep, rest = text.partition(": ")
    if sep and head.rsplit(".", 1)[-1] == error.cls_name:  # "module.Class: message"
        text = f"{error.cls_name}: {rest}"
    elif error.cls_name and not text.startswith(error.cls_name):
        text = f"{error.cls_name}: {text}"
    return text.splitlines()[0] if text else (error.cls_name or "unknown error")


def _failure_reason(ctx: Context, analysis: str, key: str, result: Any) -> str:
    """Why ``key`` failed in ``result``'s run: its registry entry's error when this run wrote it, else
    the run's root cause. A job the run left ``running`` (its failure could not be written, e.g. the
    store was locked) is failed now, through the lifecycle, with that cause; if the store still does not
    answer, the line says so and the inbox sensor's lost-run check fails it later."""
    from analysis_wrapper.lifecycle import JobLifecycle
    from analysis_wrapper.store.base import JobState, StoreError

    cause = _root_failure(result)
    try:
        entry = ctx.store.get_job(analysis, key)
        if entry is not None and entry.run_id == result.run_id:
            if entry.state == JobState.RUNNING:
                JobLifecycle(ctx.store).failed(analysis, key, result.run_id, cause)
                return cause
            if entry.last_error:
                return entry.last_error.splitlines()[0]
    except StoreError as exc:
        return (
            f"{cause}; the job could not be marked failed ({exc}): once the store answers, the inbox "
            "sensor fails it as lost (or `analysis-wrapper retry` re-queues it)"
        )
    return cause


def _root_failure(result: Any) -> str:
    """The root cause of the first failed step of ``result``'s run, in one line."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return error_line(event.step_failure_data.error)
    for event in result.all_events:
        if event.is_run_failure and event.job_failure_data and event.job_failure_data.error:
            return error_line(event.job_failure_data.error)
    return "run failed (see the Dagster run log)"


def _statuses(result: Any) -> dict[str, tuple[str, str]]:
    """Per partition, the ``status`` and results location of its materialization in ``result``."""
    from analysis_wrapper.resources.results_io import LOCATION_METADATA_KEY

    found: dict[str, tuple[str, str]] = {}
    for event in result.all_events:
        if event.is_step_materialization:
            materialization = event.step_materialization_data.materialization
        elif event.is_asset_observation:  # a skip or a dry run: reported as an observation
            materialization = event.asset_observation_data.asset_observation
        else:
            continue
        metadata = materialization.metadata
        status = metadata.get("status")
        location = metadata.get(LOCATION_METADATA_KEY)
        found[str(materialization.partition)] = (
            str(getattr(status, "value", status) or ""),
            str(getattr(location, "value", location) or ""),
        )
    return found


def _dry_run(ctx: Context, asked: bool | None) -> bool:
    """Whether this run is a dry run: ``--dry-run`` / ``--no-dry-run``, else ``DRY_RUN``."""
    return bool(ctx.defs.resources["runtime"].dry_run if asked is None else asked)


def _wait_for_other_run(
    ctx: Context, job: Any, status: str, force: bool = False, dry_run: bool | None = None
) -> tuple[str, str]:
    """A job skipped because another run holds its fingerprint: wait while that run's claim lives,
    then say whether it was recorded (by whom) or not.

    Without ``force`` a record ends the wait (the other run committed it). Under ``force`` the record
    being replaced is there all along: the wait lasts while a claim lives, and only a record of a run
    seen holding the claim counts. The record is read once the claim is gone (a run commits before it
    releases), so a record committed just before the release is not missed."""
    import time

    from analysis_wrapper.ownership import fingerprint_key, lease_dead

    holders: set[str] = set()
    if "being computed" in status:
        key = fingerprint_key(job.fingerprint, dry_run=_dry_run(ctx, dry_run))
        holders.add(status.rsplit(" ", 1)[-1])
        while force or not ctx.store.existing_fingerprints(job.analysis, [job.fingerprint]):
            lease = ctx.store.get_leases([key]).get(key)
            if lease is None or lease_dead(lease):
                break
            holders.add(lease.run_id)
            time.sleep(0.2)
    record = ctx.store.get_record(job.analysis, job.fingerprint)
    by = str((record or {}).get("analysis_wrapper", {}).get("run_id", "?"))
    if record is None or (force and holders and by not in holders):
        ended = "; that run ended without a record (it is retried there)" if holders else ""
        return ("elsewhere", f"{status}{ended}")
    return ("already done", f"{record.get('location')} (recorded by run {by[:8]})")


ELLIPSIS = "…"


def cut(text: str, width: int | None) -> str:
    """``text`` whole when it fits in ``width`` (None: no limit), else cut with an ellipsis."""
    if width is None or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_status(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    rows = [entry.as_json() for entry in ctx.store.list_jobs(args.analysis)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = None if args.full else ERROR_WIDTH
    for row in rows:
        row["fingerprint"] = row["fingerprint"][:16]
        row["last_error"] = cut((row["last_error"] or "").replace("\n", " "), width)
    _print_table(
        rows, ["analysis", "partition_key", "state", "attempts", "fingerprint", "run_id", "last_error"]
    )
    return 0


def result_summary(record: dict[str, Any]) -> dict[str, Any]:
    process = record["processing"]["data_processes"][0]
    extra = record.get("analysis_wrapper", {})
    return {
        "fingerprint": record["name"],
        "analysis": extra.get("analysis", process.get("name")),
        "version": process["code"].get("version"),
        "partition_key": extra.get("partition_key"),
        "location": record.get("location"),
        "finished": process.get("end_date_time"),
        "outputs": process.get("output_parameters"),
    }


def parse_param_filters(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is read as JSON when it parses (1.5, true, null, "x"), else as text."""
    filters: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --param wants KEY=VALUE, got {item!r}")
        try:
            filters[key] = json.loads(text)
        except json.JSONDecodeError:
            filters[key] = text
    return filters


def latest_per_input(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest record for each (analysis, input locations); records come oldest first."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for record in records:
        extra = record.get("analysis_wrapper", {})
        latest[(extra.get("analysis"), tuple(extra.get("inputs") or ()))] = record
    return list(latest.values())


def record_files(record: dict[str, Any], s3_client: Any) -> list[dict[str, Any]]:
    """The files of a record's result folder, wherever it is (local folder or S3)."""
    from analysis_wrapper.resources.results_resources import storage_for_location

    storage, name = storage_for_location(record["location"], s3_client)
    return [{"name": f.name, "size": f.size} for f in storage.list_files(name)]


def cmd_results(args: argparse.Namespace) -> int:
    ctx = open_context(args)
    records = ctx.store.find_records(
        args.analysis,
        parameters=parse_param_filters(args.param),
        code_version=args.code_version,
        include_superseded=args.include_superseded,
    )
    if args.latest:
        records = latest_per_input(records)
    if args.files:
        from analysis_wrapper.resources.s3_client import cached_client

        s3_client = (
            cached_client(ctx.defs.resources["s3"])
            if any(r["location"].startswith("s3://") for r in records)
            else None
        )
        for record in records:
            record["files"] = record_files(record, s3_client)
    if args.json:
        print(json.dumps(records, indent=2, default=str))
        return 0
    rows = [result_summary(r) for r in records]
    width = None if args.full else OUTPUTS_WIDTH
    for row in rows:
        row["fingerprint"] = row["fingerprint"][:16]
        row["outputs"] = cut(json.dumps(row["outputs"]), width)
    _print_table(
        rows, ["analysis", "version", "partition_key", "fingerprint", "finished", "location", "outputs"]
    )
    if args.files:
        for record in records:
            print(f"\n{record['location']}:")
            for item in record["files"]:
                print(f"  {item['size']:>12}  {item['name']}")
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-queue failed jobs: back to pending, so the inbox sensor requests them on its next tick."""
    from analysis_wrapper.lifecycle import JobLifecycle
    from analysis_wrapper.store.base import JobState

    ctx = open_context(args)
    # Named jobs may also be stuck queued/running (their run died with the machine); unnamed: every
    # failed job (of --analysis, or of any analysis in the registry).
    allowed = {JobState.FAILED, JobState.QUEUED, JobState.RUNNING} if args.keys else {JobState.FAILED}
    found: dict[str, Any] = {}
    if args.keys:
        for name in [args.analysis] if args.analysis else sorted(ctx.analyses):
            for key, entry in ctx.store.get_jobs(name, args.keys).items():
                found.setdefault(key, entry)
    else:
        for entry in ctx.store.list_jobs(args.analysis, [JobState.FAILED]):
            found.setdefault(entry.partition_key, entry)
    requeued = 0
    for key in dict.fromkeys(args.keys or list(found)):
        entry = found.get(key)
        if entry is None:
            print(f"UNKNOWN {key}: no registered job has this partition key")
            continue
        if entry.state not in allowed:
            done = entry.state in {JobState.DONE, JobState.SKIPPED}
            advice = " (`analysis-wrapper run --force` runs it again)" if done else ""
            print(f"left as is: {entry.analysis} {key} is {entry.state.value}{advice}")
            continue
        if not JobLifecycle(ctx.store).retry_asked(entry):
            print(f"left as is: {entry.analysis} {key} changed meanwhile (see `analysis-wrapper status`)")
            continue
        requeued += 1
        error = f"; last error: {entry.last_error[:80]}" if entry.last_error else ""
        print(f"re-queued {entry.analysis} {key} (attempt {entry.attempts + 1} next{error})")
    print(
        f"{requeued} job(s) re-queued. The inbox sensor requests them on its next tick (`dagster dev` or "
        "`dagster-daemon run` must be running); `analysis-wrapper run` runs them now, in-process."
    )
    return 1 if args.keys and len(found) < len(set(args.keys)) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analysis-wrapper",
        description="Run dispatched analysis jobs as Dagster partitions, record provenance, never run twice.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log what happens to each job, with Dagster's own log and full stack traces",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="validate job files and register them as partitions")
    submit.add_argument("paths", nargs="+", help="job JSON files or folders of them")
    submit.add_argument(
        "--analysis", help="analysis to run the jobs with (overrides the job's analysis_name)"
    )
    submit.set_defaults(func=cmd_submit)

    run = sub.add_parser("run", help="register job files, then run every pending job in-process")
    run.add_argument("paths", nargs="*", help="job JSON files or folders; none: every registered job")
    run.add_argument("--analysis", help="analysis to run the jobs with (overrides the job's analysis_name)")
    run.add_argument("--force", action="store_true", help="run even jobs whose fingerprint is recorded")
    dry = run.add_mutually_exclusive_group()
    dry.add_argument("--dry-run", dest="dry_run", action="store_true", default=None, help="post nothing")
    dry.add_argument("--no-dry-run", dest="dry_run", action="store_false", help="post results (DRY_RUN=0)")
    run.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"jobs per Dagster run (default {DEFAULT_BATCH_SIZE}); 1: one run per job, as the UI does",
    )
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="show every registered job and its state")
    status.add_argument("--analysis", help="only this analysis")
    status.add_argument("--json", action="store_true", help="print a JSON list")
    status.add_argument("--full", action="store_true", help="show every error whole (no ellipsis)")
    status.set_defaults(func=cmd_status)

    retry = sub.add_parser("retry", help="re-queue failed jobs for the inbox sensor to run again")
    retry.add_argument("keys", nargs="*", help="partition keys (default: every failed job)")
    retry.add_argument("--analysis", help="only this analysis")
    retry.set_defaults(func=cmd_retry)

    results = sub.add_parser("results", help="show the provenance records")
    results.add_argument("--analysis", help="only this analysis")
    results.add_argument("--json", action="store_true", help="print a JSON list (whole records)")
    results.add_argument(
        "--full", action="store_true", help="show long values whole (default: cut with an ellipsis)"
    )
    results.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only records with this parameter value",
    )
    results.add_argument("--code-version", help="only records of this analysis version")
    results.add_argument("--latest", action="store_true", help="only the newest record per input")
    results.add_argument("--files", action="store_true", help="list each record's result files (local or S3)")
    results.add_argument(
        "--include-superseded", action="store_true", help="also records replaced under force"
    )
    results.set_defaults(func=cmd_results)

    from analysis_wrapper.dispatching.cli import add_dispatch_parser

    add_dispatch_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. 0: fine; 1: a job failed or a file was rejected (the others
    were processed); 2: the command could not run (bad setting, store unreachable, dirty tree, ...),
    said in one line on stderr (``--verbose``: with the full trace)."""
    args = build_parser().parse_args(argv)
    # force: main may run more than once in a process (tests, notebooks); each run logs to the
    # sys.stderr of now, not to the one of the first call (which may be closed by then).
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if not args.verbose:
        _quiet_dagster_warnings()
    from analysis_wrapper.provenance import DirtyTreeError
    from analysis_wrapper.store.base import StoreError

    try:
        return int(args.func(args))
    except (StoreError, DirtyTreeError, SettingsError) as exc:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # anything else: one line (what and where), the trace under --verbose
        if args.verbose:
            raise
        print(
            f"error: {_exception_line(exc)} (`analysis-wrapper --verbose ...` shows the full trace)",
            file=sys.stderr,
        )
        return 2


def _exception_line(exc: BaseException) -> str:
    """``Class: message`` of ``exc``'s root cause (its explicit ``__cause__`` chain), with the
    outermost exception named when it adds something."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = f"{type(root).__name__}: {str(root).strip().splitlines()[0] if str(root).strip() else ''}"
    return text if root is exc else f"{type(exc).__name__}: {str(exc).strip()[:200]} ({text})"


def _quiet_dagster_warnings() -> None:
    """Dagster's beta/preview notices about its own API are for developers, not for each command."""
    import warnings

    from dagster import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)


if __name__ == "__main__":
    sys.exit(main())
