"""``submit``, ``run`` and ``retry``: job files registered, jobs run in-process
(:mod:`analysis_wrapper.runner`), failed jobs re-queued; one line per job and per rejected file."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from analysis_wrapper.errors import one_line
from analysis_wrapper.job_file import AnalysisJob
from analysis_wrapper.lifecycle import JobLifecycle
from analysis_wrapper.records import jobs_by_key
from analysis_wrapper.registration import find_job_files, prepare_files, register
from analysis_wrapper.runner import (
    DEFAULT_BATCH_SIZE,
    OUTCOMES,
    RunOptions,
    check_may_run,
    registered_jobs,
    run_jobs,
)
from analysis_wrapper.session import Session, open_session
from analysis_wrapper.store.base import JobState

log = logging.getLogger(__name__)


def add_submit_parser(sub: Any) -> None:
    submit = sub.add_parser("submit", help="validate job files and register them as partitions")
    submit.add_argument("paths", nargs="+", help="job JSON files or folders of them")
    submit.add_argument(
        "--analysis", help="analysis to run the jobs with (overrides the job's analysis_name)"
    )
    submit.set_defaults(func=cmd_submit)


def add_run_parser(sub: Any) -> None:
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
    run.add_argument(
        "--summary",
        action="store_true",
        help="also update the summaries of the analyses that recorded a job, in this process "
        "(without it, the daemon's automation does)",
    )
    run.set_defaults(func=cmd_run)


def add_retry_parser(sub: Any) -> None:
    retry = sub.add_parser("retry", help="re-queue failed jobs for the inbox sensor to run again")
    retry.add_argument("keys", nargs="*", help="partition keys (default: every failed job)")
    retry.add_argument("--analysis", help="only this analysis")
    retry.set_defaults(func=cmd_retry)


def check_served(session: Session, analysis: str | None) -> None:
    """Refuse an ``--analysis`` this code location does not serve."""
    if analysis and analysis not in session.analyses:
        raise SystemExit(
            f"error: --analysis {analysis!r} is not served here (known: {', '.join(session.analyses)})"
        )


def register_paths(
    session: Session, paths: Sequence[str], analysis: str | None, out: TextIO
) -> tuple[list[AnalysisJob], int, dict[tuple[str, str], str]]:
    """Validate and register job files, printing each rejected one: the jobs registered or known, the
    number of files rejected, and what registering did to each job (by analysis and partition key:
    "registered", "updated", "already registered" or "already recorded")."""
    check_served(session, analysis)
    files, missing = find_job_files(Path(p) for p in paths)
    prepared = prepare_files(files, session.analyses, analysis, session.settings.MAX_JOB_FILE_BYTES)
    for item in missing + prepared.rejected:
        print(f"REJECTED {item.message}", file=out)
    verbs: dict[tuple[str, str], str] = {}
    for name, jobs in prepared.jobs.items():
        done = register(jobs, session.analyses[name], session.store, session.instance)
        for job in jobs:
            key, outcome = job.partition_key, done.outcome
            verb = "registered" if key in outcome.added else "updated" if key in outcome.changed else "known"
            verb = "already recorded" if key in done.recorded else verb.replace("known", "already registered")
            verbs[(name, key)] = verb
            log.info("%s %s %s (%s)", verb, name, key, job.source)
    return prepared.all_jobs(), len(missing) + len(prepared.rejected), verbs


class Progress:
    """A progress bar on a terminal; a line per job otherwise."""

    def __init__(self, total: int, stream: TextIO):
        self.total = total
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()

    def step(self, line: str, keep: bool = False) -> None:
        """One job done; ``keep``: its line stays whole above the bar (a failure's reason)."""
        self.done += 1
        if self.tty:
            if keep:
                self.stream.write(f"\r{line:<100}\n")
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            bar = "#" * filled + "." * (width - filled)
            self.stream.write(f"\r[{bar}] {self.done}/{self.total} {line[:60]:<60}")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
        else:
            print(line, file=self.stream, flush=True)


def cmd_submit(args: argparse.Namespace) -> int:
    session = open_session()
    jobs, rejected, verbs = register_paths(session, args.paths, args.analysis, sys.stdout)
    for job in jobs:
        verb = verbs[(job.analysis, job.partition_key)]
        print(f"{verb} {job.analysis} {job.partition_key} fingerprint {job.fingerprint[:16]} ({job.source})")
    counts = {verb: list(verbs.values()).count(verb) for verb in dict.fromkeys(verbs.values())}
    detail = f": {', '.join(f'{n} {verb}' for verb, n in counts.items())}" if jobs else ""
    print(f"{len(jobs)} job(s) registered, {rejected} file(s) rejected{detail}")
    if "already recorded" in counts:
        print("jobs already recorded do not run again (`analysis-wrapper run --force FILE` runs them anyway)")
    return 1 if rejected else 0


def cmd_run(args: argparse.Namespace) -> int:
    session = open_session()
    options = RunOptions(args.force, args.dry_run, args.verbose, args.batch_size, args.summary)
    if args.paths:
        jobs, rejected, _verbs = register_paths(session, args.paths, args.analysis, sys.stdout)
        broken = 0
    else:
        check_served(session, args.analysis)
        jobs, skipped = registered_jobs(session, args.analysis)
        for item in skipped:
            print(f"SKIPPED registered job {item.source}: {item.message}", file=sys.stderr)
        rejected, broken = 0, len(skipped)
    unique = list({(j.analysis, j.partition_key): j for j in jobs}.values())
    check_may_run(session, options, {j.analysis for j in unique})
    counts = dict.fromkeys(OUTCOMES, 0)
    progress = Progress(len(unique), sys.stdout)
    for done in run_jobs(session, unique, options):
        counts[done.outcome] += 1
        detail = "" if done.detail is None else f" {done.detail}"
        line = f"{done.outcome:<13} {done.job.analysis} {done.job.partition_key}{detail}"
        progress.step(line, keep=done.outcome in {"failed", "elsewhere"})
    # "elsewhere": another run held the job's fingerprint and ended without a record (shown when it happened).
    summary = ", ".join(f"{n} {label}" for label, n in counts.items() if n or label != "elsewhere")
    print(f"{len(unique)} job(s): {summary}; {rejected} file(s) rejected")
    if not unique and not rejected:
        print(nothing_to_run(session, args.paths, args.analysis, broken))
    return 1 if counts["failed"] or rejected else 0


def nothing_to_run(session: Session, paths: Sequence[str], analysis: str | None, broken: int) -> str:
    """Why ``run`` found no job, truly: job files given but none found (while registered jobs may wait
    to run: said, with how to run them), or registered jobs none of which can run here (``broken``:
    how many could not be rebuilt, each said above)."""
    entries = session.store.list_jobs(analysis)
    if paths:
        due = {JobState.PENDING, JobState.FAILED}
        waiting = sum(entry.state in due and entry.analysis in session.analyses for entry in entries)
        how = f"; {waiting} registered job(s) wait to run (`analysis-wrapper run` runs them)" * bool(waiting)
        return f"nothing to run: no job file found in {', '.join(paths)}{how}"
    if not entries:
        return "nothing to run: no job is registered (`analysis-wrapper run FILES` registers and runs them)"
    reasons = [f"{broken} registered job(s) cannot be rebuilt (above)"] if broken else []
    unserved = [entry.analysis for entry in entries if entry.analysis not in session.analyses]
    if unserved:
        names = ", ".join(sorted(set(unserved)))
        reasons.append(f"{len(unserved)} registered job(s) are of analyses not served here ({names})")
    return f"nothing to run: {'; '.join(reasons)}"


def cmd_retry(args: argparse.Namespace) -> int:
    """Re-queue failed jobs: back to pending, so the inbox sensor requests them on its next tick."""
    session = open_session()
    # Named jobs may also be stuck queued/running (their run died with the machine); unnamed: every
    # failed job (of --analysis, or of any analysis in the registry).
    allowed = {JobState.FAILED, JobState.QUEUED, JobState.RUNNING} if args.keys else {JobState.FAILED}
    if args.keys:
        names = [args.analysis] if args.analysis else sorted(session.analyses)
        found = jobs_by_key(session.store, names, args.keys)
    else:
        found = {}
        for failed in session.store.list_jobs(args.analysis, [JobState.FAILED]):
            found.setdefault(failed.partition_key, failed)
    lifecycle = JobLifecycle(session.store)
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
        if not lifecycle.retry_asked(entry):
            print(f"left as is: {entry.analysis} {key} changed meanwhile (see `analysis-wrapper status`)")
            continue
        requeued += 1
        error = f"; last error: {one_line(entry.last_error)}" if entry.last_error else ""
        print(f"re-queued {entry.analysis} {key} (attempt {entry.attempts + 1} next{error})")
    print(
        f"{requeued} job(s) re-queued. The inbox sensor requests them on its next tick (`dagster dev` or "
        "`dagster-daemon run` must be running); `analysis-wrapper run` runs them now, in-process."
    )
    return 1 if args.keys and len(found) < len(set(args.keys)) else 0
