"""Provenance: the record written for every completed job, and the code state it names.

The record keeps the AIND field paths their readers query (``name``, ``location``,
``processing.data_processes[0].code.{url,version,parameters,input_data[].url}``,
``.output_parameters``, ``.start_date_time``, ``.end_date_time``, ``.experimenters``, ``.notes``,
``.process_type`` = "Analysis"); the ``processing`` part is a valid aind-data-schema 2.x
``Processing``. What Dagster and this wrapper know (run id, partition key, asset key, git commit,
dirty flag, the digest of the analysis's source files, package versions) sits beside it under
``analysis_wrapper``.

AIND's readers (``get_docdb_records_partial`` of analysis-pipeline-utils) compare two parts of
``code`` as whole embedded documents, which MongoDB does field by field, in order, extra or missing
fields included:

* ``input_data``: each entry is exactly ``DataAsset(url=<s3_location>).model_dump(mode="json")``
  (``object_type``, ``name`` = None, ``url``), as AIND's own records and readers build it; the job's
  asset names are kept under ``analysis_wrapper.asset_names`` instead.
* ``parameters``: the validated parameters in the analysis's ``Params`` model field order, with every
  field (``Params(...).model_dump(mode="json")``), so a reader's ``Params(...).model_dump()`` matches.

``created`` (what ``latest_only`` sorts on, as text) and the process times are fixed-width UTC
ISO-8601 with microseconds, so sorting them as text sorts them as time.

Git commit, dirty flag and source digest go into the record, never into the fingerprint: a new commit
alone does not re-run anything. Posting results from a dirty tree is refused unless explicitly allowed.
"""

from __future__ import annotations

import datetime as dt
import functools
import getpass
import importlib.metadata
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from analysis_wrapper.analysis_source import AnalysisSource, git
from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.job_file import AnalysisJob
from analysis_wrapper.settings import redact_uri

if TYPE_CHECKING:
    from analysis_wrapper.analysis import Analysis

AIND_PROCESSING_SCHEMA_VERSION = "2.3.3"
AIND_PROCESSING_DESCRIBED_BY = (
    "https://raw.githubusercontent.com/AllenNeuralDynamics/aind-data-schema/main/src/"
    "aind_data_schema/core/processing.py"
)
_COMMIT_PATTERN = re.compile(r"^[0-9a-fA-F]{7,60}$")


class DirtyTreeError(AnalysisWrapperError, RuntimeError):
    """Refusal to post results computed from code with uncommitted changes."""


@dataclass(frozen=True)
class CodeState:
    """Which code ran: git commit (or ``GIT_COMMIT``), whether it had uncommitted changes, the
    repository URL (credentials removed) and the digest of the analysis's own source files."""

    commit: str | None
    dirty: bool
    repository_url: str | None
    source: str  # "git", "GIT_COMMIT" or "unknown"
    source_digest: str | None = None


def code_state(
    repo: Path | None, git_commit_env: str | None = None, analysis: Analysis[Any, Any] | None = None
) -> CodeState:
    """Read the code state of the git work tree holding ``repo`` (``CODE_REPOSITORY``), or, for None,
    the tree holding ``analysis``'s source (without an analysis: ``analysis_wrapper``'s own).

    Changes to tracked files make a tree dirty; untracked files do not (results and example data live
    in the work tree), except among the analysis's own source (:mod:`analysis_wrapper.analysis_source`):
    an analysis module never committed is not in the recorded commit. A source the tree ignores (a
    package installed into a virtual environment inside it) is outside any tree, like one installed
    from a wheel. Without a git work tree, ``GIT_COMMIT`` names the commit.
    """
    source = AnalysisSource.of(analysis) if analysis is not None else None
    digest = source.digest() if source else None
    where = repo or (source.folder if source else Path(__file__).parent)
    top = git(where, "rev-parse", "--show-toplevel")
    if top is not None and not (repo is None and source is not None and source.ignored_in(Path(top))):
        status = git(where, "status", "--porcelain", "--untracked-files=no")
        remote = git(where, "config", "--get", "remote.origin.url")
        return CodeState(
            commit=git(where, "rev-parse", "HEAD"),
            dirty=bool(status) or (source is not None and source.changed_in(Path(top))),
            repository_url=redact_uri(remote) if remote else None,
            source="git",
            source_digest=digest,
        )
    if git_commit_env:
        return CodeState(git_commit_env.strip(), False, None, "GIT_COMMIT", digest)
    return CodeState(commit=None, dirty=False, repository_url=None, source="unknown", source_digest=digest)


def check_may_post(state: CodeState, dry_run: bool, allow_dirty: bool) -> None:
    """Refuse a non-dry run from a dirty tree unless allowed; say how to proceed."""
    if state.dirty and not dry_run and not allow_dirty:
        raise DirtyTreeError(
            "The analysis code has uncommitted changes (changed tracked files, or untracked or changed "
            "files among the analysis's own source), so its results could not be reproduced from the "
            f"recorded commit {state.commit or '(none)'}. Commit the changes, or run with DRY_RUN=1, or set "
            "ALLOW_DIRTY=1 to post anyway (the record will say dirty: true)."
        )


@functools.cache
def environment_description() -> dict[str, Any]:
    """Python, platform and every installed distribution's version (computed once per process)."""
    packages = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name.lower()] = dist.version
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": dict(sorted(packages.items())),
    }


def _iso(moment: dt.datetime) -> str:
    """``2026-01-15T10:00:00.000000Z``: always with microseconds, so text order is time order."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def data_asset(url: str) -> dict[str, Any]:
    """An ``input_data`` entry: what aind-data-schema's ``DataAsset(url=url).model_dump(mode="json")``
    gives, field for field and in its order (AIND's readers match these documents whole)."""
    return {"object_type": "Data asset", "name": None, "url": url}


def default_experimenters() -> list[str]:
    try:
        return [getpass.getuser()]
    except (KeyError, OSError):
        return ["unknown"]


def build_record(
    *,
    job: AnalysisJob,
    outputs: BaseModel,
    location: str,
    started: dt.datetime,
    finished: dt.datetime,
    code: CodeState,
    run_id: str,
    asset_key: str,
    run_script: str,
    experimenters: list[str],
    dry_run: bool,
    files: list[tuple[str, int]] | None = None,
) -> dict[str, Any]:
    """The provenance record of one completed job (``_id`` = ``name`` = fingerprint).

    ``files`` are the analysis's result files (path in the folder, size in bytes): the record lists
    them so the folder can be checked against it (the ``folder_complete`` part of the asset check).

    ``code.parameters`` is ``job.parameters`` as is: the ``Params`` model's JSON dump, so its keys are
    in the model's field order (see the module docstring: readers match the object whole).
    """
    dispatch = job.dispatch
    requested = dispatch.analysis_code
    input_data = [data_asset(url) for url in dispatch.s3_location]
    notes = [f"Analysis {job.analysis} {job.version}, partition {job.partition_key}"]
    if dispatch.query:
        notes.append(f"Query used to retrieve data assets: {dispatch.query}")
    commit = code.commit if code.commit and _COMMIT_PATTERN.match(code.commit) else None
    code_part = {
        "object_type": "Code",
        "url": code.repository_url
        or (requested.url if requested and requested.url else f"python:{run_script}"),
        "name": job.analysis,
        "version": job.version,
        "commit_hash": commit,
        "container": None,
        "run_script": run_script,
        "language": "Python",
        "language_version": platform.python_version(),
        "input_data": input_data,
        "parameters": job.parameters,
        "core_dependency": None,
    }
    process = {
        "object_type": "Data process",
        "process_type": "Analysis",
        "name": job.analysis,
        "stage": "Analysis",
        "code": code_part,
        "experimenters": experimenters,
        "pipeline_name": None,
        "start_date_time": _iso(started),
        "end_date_time": _iso(finished),
        "output_path": None,
        "output_parameters": outputs.model_dump(mode="json"),
        "notes": "\n".join(notes),
        "resources": None,
    }
    return {
        "_id": job.fingerprint,
        "name": job.fingerprint,
        "location": location,
        "created": _iso(finished),
        "processing": {
            "object_type": "Processing",
            "describedBy": AIND_PROCESSING_DESCRIBED_BY,
            "schema_version": AIND_PROCESSING_SCHEMA_VERSION,
            "data_processes": [process],
            "pipelines": None,
            "notes": None,
            "dependency_graph": {job.analysis: []},
        },
        "analysis_wrapper": {
            "analysis": job.analysis,
            "analysis_version": job.version,
            "fingerprint": job.fingerprint,
            "partition_key": job.partition_key,
            "asset_key": asset_key,
            "run_id": run_id,
            "inputs": job.inputs,
            "asset_names": list(dispatch.asset_name),
            "job_source": job.source,
            "docdb_record_id": dispatch.docdb_record_id,
            "group_metadata": dispatch.group_metadata,
            "requested_code": requested.model_dump(mode="json") if requested else None,
            "git_commit": code.commit,
            "git_dirty": code.dirty,
            "source_digest": code.source_digest,
            "code_state_source": code.source,
            "dry_run": dry_run,
            "duration_s": round((finished - started).total_seconds(), 6),
            "environment": environment_description(),
            "superseded_by": None,
            "files": [{"name": name, "size": size} for name, size in files or []],
        },
    }
