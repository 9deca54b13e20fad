"""``analysis-wrapper dispatch``: a query (or a saved query) against the metadata database, as jobs.

It prints what the query found, how many jobs were already recorded or registered, how many it
registered, and how many the cap (``--max-jobs``) left out; with ``--dry-run`` it registers nothing
and lists the jobs it would. The dispatch is recorded as a materialization of
``<analysis>_dispatches`` in the Dagster instance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from analysis_wrapper.dispatching.dispatch_config import DEFAULT_MAX_TASKS, DispatchSettings
from analysis_wrapper.dispatching.dispatch_run import dispatch, parameter_sets, report_json, resolve_query
from analysis_wrapper.dispatching.metadata_db import MetadataDatabase
from analysis_wrapper.dispatching.record import dispatch_materialization
from analysis_wrapper.dispatching.saved import load_saved_query
from analysis_wrapper.resources.s3_client import cached_client
from analysis_wrapper.session import open_session


def add_dispatch_parser(subparsers: Any) -> None:
    """The options are named for the command line; each ``dest`` is the :class:`DispatchSettings` field
    it sets (the AIND dispatcher's setting, named in its help)."""
    dispatch = subparsers.add_parser(
        "dispatch",
        help="find assets in the metadata database and register them as jobs (the AIND dispatcher)",
        description="Query the metadata collection (METADATA_DOCDB_URI/_DATABASE/_COLLECTION) and register "
        "one job per asset, group or file as partitions of the analysis; jobs already recorded or "
        "registered are skipped. The inbox sensor (or `analysis-wrapper run`) then runs them.",
    )
    one_of = dispatch.add_mutually_exclusive_group(required=True).add_argument
    one_of(
        "--query",
        dest="docdb_query",
        metavar="JSON_OR_FILE",
        help="docdb_query: a MongoDB filter, as JSON or a JSON file",
    )
    one_of(
        "--asset-csv",
        dest="data_asset_csv",
        metavar="FILE",
        help="data_asset_csv: a CSV with an asset_id column",
    )
    one_of("--saved", metavar="YAML", help="a saved query file (as the dispatch sensors run them)")
    add = dispatch.add_argument
    add("--analysis", help="the analysis the jobs are for (default: the only one served)")
    add("--file-extension", metavar="EXT", help="file_extension: one job per matching file")
    add(
        "--split-files",
        type=int,
        metavar="N",
        help="split_files: with --file-extension, N = a job per N files of an asset (default 1), "
        "0 = a job per asset (or group) with all its files",
    )
    add("--group-by", nargs="+", action="extend", metavar="FIELD", help="group_by fields")
    add("--filter-latest", metavar="FIELD", help="filter_latest: keep the newest record ...")
    add("--filter-by", nargs="+", action="extend", metavar="FIELD", help="... per filter_by group")
    add(
        "--unwind",
        dest="unwind_list_fields",
        nargs="+",
        action="extend",
        metavar="FIELD",
        help="unwind_list_fields",
    )
    add(
        "--keep-null-groups",
        dest="drop_null_groups",
        action="store_false",
        default=None,
        help="drop_null_groups=0: keep records with null group fields",
    )
    add(
        "--parameters",
        dest="parameters_file",
        metavar="FILE",
        help="analysis_parameters.json: parameter sets every job is crossed with",
    )
    add(
        "--max-jobs",
        dest="max_number_of_tasks_dispatched",
        type=int,
        metavar="N",
        help=f"max_number_of_tasks_dispatched: most new jobs registered (default {DEFAULT_MAX_TASKS})",
    )
    add("--tasks-per-job", type=int, metavar="N", help="tasks_per_job: job files per folder")
    add("--out", dest="output_directory", metavar="DIR_OR_S3", help="also write the jobs as files there")
    add("--dry-run", action="store_true", default=None, help="register nothing: show what would be")
    add("--json", action="store_true", help="print the report as JSON")
    dispatch.set_defaults(func=cmd_dispatch)


def settings_from_args(args: argparse.Namespace) -> tuple[str | None, DispatchSettings]:
    """(analysis, settings) from the command line, or from ``--saved`` with the command line's options
    on top."""
    values: dict[str, Any] = {}
    analysis = args.analysis
    if args.saved:
        saved = load_saved_query(Path(args.saved))
        values = saved.settings.model_dump()
        analysis = analysis or saved.analysis
    given = {k: v for k, v in vars(args).items() if k in DispatchSettings.model_fields and v is not None}
    return analysis, DispatchSettings.model_validate({**values, **given})


def print_report(report: Any, out: Any = None) -> None:
    out = out or sys.stdout  # the stream of now (not of import time: it may be closed by then)
    verb = "would register" if report.dry_run else "registered"
    print(
        f"found: {report.found} asset(s)/group(s) from {report.query_source}, {report.jobs} job(s)", file=out
    )
    print(f"already recorded: {report.already_recorded}", file=out)
    print(f"already registered: {report.already_registered}", file=out)
    print(
        f"{verb}: {report.registered}"
        + (f" (+{report.reregistered} re-registered)" if report.reregistered else ""),
        file=out,
    )
    print(f"left out by the cap: {report.left_out}", file=out)
    for reason in report.unusable:
        print(f"UNUSABLE {reason}", file=out)
    for reason in report.rejected:
        print(f"REJECTED {reason}", file=out)
    if report.dry_run:
        for key in report.keys:
            print(f"would register {report.analysis} {key}", file=out)
    if report.written:
        print(f"written: {len(report.written)} job file(s), e.g. {report.written[0]}", file=out)
    print(report.summary(), file=out)


def cmd_dispatch(args: argparse.Namespace) -> int:
    try:
        name, settings = settings_from_args(args)
        resolve_query(settings)  # a bad query or parameters file fails here, before anything is opened
        parameter_sets(settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        print(f"error: {where}: {first['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    session = open_session()
    served = ", ".join(sorted(session.analyses))
    if name is None:
        if len(session.analyses) != 1:
            print(f"error: --analysis is needed (served here: {served})", file=sys.stderr)
            return 2
        name = next(iter(session.analyses))
    if name not in session.analyses:
        print(f"error: --analysis {name!r} is not served here (known: {served})", file=sys.stderr)
        return 2
    metadata = MetadataDatabase.from_settings(session.settings)
    s3 = session.resources["s3"]
    try:
        report = dispatch(
            session.analyses[name],
            settings,
            session.store,
            metadata,
            session.instance,
            s3_client=lambda: cached_client(s3),
            origin=f"saved query {Path(args.saved).stem}" if args.saved else "cli",
        )
    finally:
        metadata.close()
    if not report.dry_run:
        session.instance.report_runless_asset_event(dispatch_materialization(report))
    if args.json:
        print(json.dumps(report_json(report), indent=2, default=str))
    else:
        print_report(report)
    return 1 if report.rejected else 0
