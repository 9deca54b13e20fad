"""The trivial analysis of the benchmarks (reads its input's size, writes one small file), job files,
and the ``analysis-wrapper`` CLI serving it.

``python -m benchmarks.trivial run --no-dry-run JOBS_DIR`` is the real CLI (``analysis_wrapper.cli.main``)
with this analysis served beside the shipped ones: the code path of ``analysis-wrapper run``, unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from analysis_wrapper.analysis import Analysis

NAME = "bench_trivial"
RESULT_FILE = "result.txt"


class TrivialParams(BaseModel):
    analysis_name: str = NAME
    label: str = Field("benchmark", description="Written into the result file")


class TrivialOutputs(BaseModel):
    input_bytes: int


def run_trivial(job: Any, params: TrivialParams, results_dir: Path, logger: logging.Logger) -> TrivialOutputs:
    size = sum(Path(p).stat().st_size for p in job.input_paths)
    (Path(results_dir) / RESULT_FILE).write_text(f"{params.label}: {size} bytes\n")
    return TrivialOutputs(input_bytes=size)


analysis: Analysis[TrivialParams, TrivialOutputs] = Analysis(
    name=NAME,
    version="1.0.0",
    params=TrivialParams,
    outputs=TrivialOutputs,
    run=run_trivial,
    description="Benchmark: writes one small file.",
)


def write_job(folder: Path, inputs: Sequence[Path], parameters: dict[str, Any]) -> Path:
    """An AIND-format job file (the dispatcher's ``AnalysisDispatchModel``), named by uuid4 as it does."""
    job = {
        "s3_location": [str(p.parent) for p in inputs],
        "asset_name": [p.stem for p in inputs],
        "docdb_record_id": [str(uuid.uuid4()) for _ in inputs],
        "file_location": [str(p) for p in inputs],
        "distributed_parameters": None,
        "group_metadata": None,
        "query": None,
        "analysis_code": {
            "object_type": "Code",
            "url": "https://example.org/benchmark",
            "name": parameters.get("analysis_name"),
            "version": "1.0.0",
            "parameters": parameters,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4()}.json"
    path.write_text(json.dumps(job, indent=2))
    return path


def write_trivial_jobs(root: Path, n: int) -> Path:
    """``n`` job files, each over its own small input file; returns the jobs folder."""
    inputs = root / "inputs"
    jobs = root / "jobs"
    inputs.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        source = inputs / f"asset_{i:06d}" / f"asset_{i:06d}.txt"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"input {i}\n")
        write_job(jobs, [source], {"analysis_name": NAME, "label": f"job {i}"})
    return jobs


@contextlib.contextmanager
def served() -> Iterator[None]:
    """Make the CLI serve this module's analysis beside the discovered ones (``ANALYSIS_MODULES``)."""
    before = os.environ.get("ANALYSIS_MODULES")
    os.environ["ANALYSIS_MODULES"] = __name__ if __name__ != "__main__" else "benchmarks.trivial"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ANALYSIS_MODULES", None)
        else:
            os.environ["ANALYSIS_MODULES"] = before


def main(argv: Sequence[str] | None = None) -> int:
    from analysis_wrapper.cli import main as cli_main

    with served():
        return cli_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
