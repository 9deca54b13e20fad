"""A test analysis that counts its computations, for the concurrency tests (``test_concurrency``).

Served by the CLI and ``dagster`` subprocesses through
``ANALYSIS_MODULES=analysis_wrapper_tests.counting_analysis``. Each computation appends one line
``<fingerprint> <pid> <token>`` to the file named by ``COUNTING_LOG`` (opened with ``O_APPEND`` and
written with one ``write``, so lines of concurrent processes never mix), then sleeps ``sleep_s`` to
widen the race window, and writes two result files. ``token`` is new for every computation and goes
into a result file and into the outputs (hence the record), so a record can be matched to the folder
and to the log line of the very computation that produced it.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from analysis_wrapper.analysis import Analysis

NAME = "counting"
LOG_ENV = "COUNTING_LOG"
TOKEN_FILE = "token.txt"
SIZES_FILE = "detail/sizes.txt"
RESULT_FILES = (SIZES_FILE, TOKEN_FILE)


class CountingParams(BaseModel):
    analysis_name: str = NAME
    sleep_s: float = Field(0.3, ge=0, description="Seconds to sleep inside the analysis (race window)")


class CountingOutputs(BaseModel):
    token: str = Field(description="New for every computation; also in token.txt")
    pid: int = Field(description="The process that computed")
    files: list[str] = Field(description="The result files the analysis wrote (relative paths)")


def log_computation(fingerprint: str, token: str) -> None:
    path = os.environ.get(LOG_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{fingerprint} {os.getpid()} {token}\n".encode())
    finally:
        os.close(fd)


def run_counting(
    job: Any, params: CountingParams, results_dir: Path, logger: logging.Logger
) -> CountingOutputs:
    token = uuid.uuid4().hex
    log_computation(job.fingerprint, token)
    time.sleep(params.sleep_s)
    sizes = [Path(p).stat().st_size for p in job.input_paths]
    (results_dir / "detail").mkdir()
    (results_dir / SIZES_FILE).write_text(",".join(map(str, sizes)) + "\n")
    (results_dir / TOKEN_FILE).write_text(token + "\n")
    logger.info("counting computed %s (token %s)", job.fingerprint, token)
    return CountingOutputs(token=token, pid=os.getpid(), files=sorted(RESULT_FILES))


counting = Analysis(
    name=NAME,
    version="1.0",
    params=CountingParams,
    outputs=CountingOutputs,
    run=run_counting,
    description="Test: logs each computation to COUNTING_LOG, sleeps, writes two small files.",
)


def read_log(path: Path) -> list[tuple[str, int, str]]:
    """The computations logged in ``path``: (fingerprint, pid, token), in order."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        fingerprint, pid, token = line.split()
        entries.append((fingerprint, int(pid), token))
    return entries
