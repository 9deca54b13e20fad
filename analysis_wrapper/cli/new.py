"""``new``: a team's own analysis project in one command (:mod:`analysis_wrapper.scaffold`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from analysis_wrapper.scaffold import write_project


def add_new_parser(sub: Any) -> None:
    new = sub.add_parser(
        "new",
        help="write a team's own analysis project (package, entry point, code location, tests, README)",
    )
    new.add_argument("name", help="the analysis and package name, a lowercase Python identifier (spike_rate)")
    new.add_argument("directory", type=Path, help="where to write it: a new or empty folder")
    new.add_argument(
        "--from-capsule",
        type=Path,
        metavar="RUN_CAPSULE_PY",
        help="start from a capsule module (the AIND template's run_capsule.py), copied in unchanged",
    )
    new.set_defaults(func=cmd_new)


def cmd_new(args: argparse.Namespace) -> int:
    project = write_project(args.name, args.directory, args.from_capsule)
    for path in project.files:
        print(f"wrote {path.relative_to(project.directory)}")
    print(
        f"\nProject {args.name} written to {project.directory}. Next:\n"
        f"  cd {project.directory}\n"
        "  pip install -e '.[dev]'\n"
        "  python -m pytest\n"
        f"  analysis-wrapper run --analysis {project.analysis_name} <job files or folders>\n"
        "  DAGSTER_HOME=$PWD/.dagster_home dagster dev   # the instance run used\n"
        "(its README.md says more)"
    )
    return 0
