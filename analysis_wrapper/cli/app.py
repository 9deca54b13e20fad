"""The ``analysis-wrapper`` parser (each command module adds its own) and :func:`main`: one command,
one exit code."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence

from dagster import BetaWarning, PreviewWarning

from analysis_wrapper.cli import dispatch, jobs, new, tables
from analysis_wrapper.errors import AnalysisWrapperError, one_line


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
    jobs.add_submit_parser(sub)
    jobs.add_run_parser(sub)
    tables.add_status_parser(sub)
    jobs.add_retry_parser(sub)
    tables.add_results_parser(sub)
    dispatch.add_dispatch_parser(sub)
    new.add_new_parser(sub)
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
    if not args.verbose:  # Dagster's beta/preview notices about its own API are for developers
        warnings.filterwarnings("ignore", category=BetaWarning)
        warnings.filterwarnings("ignore", category=PreviewWarning)
    try:
        return int(args.func(args))
    except AnalysisWrapperError as exc:
        if args.verbose:
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
    text = f"{type(root).__name__}: {one_line(str(root))}"
    return text if root is exc else f"{type(exc).__name__}: {one_line(str(exc))} ({text})"
