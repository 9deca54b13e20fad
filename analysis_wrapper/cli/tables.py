"""``status`` and ``results``: the job registry and the records (:mod:`analysis_wrapper.records`), as a
table or ``--json``; long outputs cut with an ellipsis, long errors shown as their first sentence, unless
``--full``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from analysis_wrapper.errors import one_line
from analysis_wrapper.records import add_files, find_records
from analysis_wrapper.session import open_session

OUTPUTS_WIDTH = 70
"""Characters of a record's outputs ``results`` shows (then an ellipsis; ``--full``: all of them)."""
ERROR_WIDTH = 60
"""A job's last error longer than this is shown by ``status`` as its first sentence (``--full``: all of
it); an error is never cut in mid-sentence (:func:`~analysis_wrapper.errors.one_line`)."""
ELLIPSIS = "…"


def add_status_parser(sub: Any) -> None:
    status = sub.add_parser("status", help="show every registered job and its state")
    status.add_argument("--analysis", help="only this analysis")
    status.add_argument("--json", action="store_true", help="print a JSON list")
    status.add_argument("--full", action="store_true", help="show every error whole (no ellipsis)")
    status.set_defaults(func=cmd_status)


def add_results_parser(sub: Any) -> None:
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


def cut(text: str, width: int | None) -> str:
    """``text`` whole when it fits in ``width`` (None: no limit), else cut with an ellipsis."""
    if width is None or len(text) <= width:
        return text
    return text[: max(width - 1, 0)] + ELLIPSIS


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        print("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))


def cmd_status(args: argparse.Namespace) -> int:
    session = open_session()
    rows = [entry.as_json() for entry in session.store.list_jobs(args.analysis)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = None if args.full else ERROR_WIDTH
    for row in rows:
        row["fingerprint"] = row["fingerprint"][:16]
        row["last_error"] = one_line(row["last_error"] or "", width)
    print_table(
        rows, ["analysis", "partition_key", "state", "attempts", "fingerprint", "run_id", "last_error"]
    )
    return 0


def result_row(record: dict[str, Any]) -> dict[str, Any]:
    """The columns ``results`` shows of one record."""
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


def cmd_results(args: argparse.Namespace) -> int:
    session = open_session()
    records = find_records(
        session.store,
        args.analysis,
        params=parse_param_filters(args.param),
        code_version=args.code_version,
        latest=args.latest,
        include_superseded=args.include_superseded,
    )
    if args.files:
        add_files(records, session.resources["s3"])
    if args.json:
        print(json.dumps(records, indent=2, default=str))
        return 0
    rows = [result_row(r) for r in records]
    width = None if args.full else OUTPUTS_WIDTH
    for row in rows:
        row["fingerprint"] = row["fingerprint"][:16]
        row["outputs"] = cut(json.dumps(row["outputs"]), width)
    print_table(
        rows, ["analysis", "version", "partition_key", "fingerprint", "finished", "location", "outputs"]
    )
    if args.files:
        for record in records:
            print(f"\n{record['location']}:")
            for item in record["files"]:
                print(f"  {item['size']:>12}  {item['name']}")
    return 0
