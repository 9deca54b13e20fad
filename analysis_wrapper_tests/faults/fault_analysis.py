"""A test analysis whose runs the fault suite can catch at known points, served through
``ANALYSIS_MODULES=analysis_wrapper_tests.faults.fault_analysis``.

Controlled from the environment, so the job (and its fingerprint) stays the same between the run a test
kills and the run that recovers it:

* ``FAULT_DIR``: each computation appends ``<fingerprint> <pid> <token>`` to ``computations.log`` there,
  writes its files, then creates ``started.<fingerprint>.<pid>`` there;
* while ``<FAULT_DIR>/hold`` exists, the analysis then waits (at most ``HOLD_LIMIT_S``): a test holds it
  to kill the run mid-analysis, or releases it once it has locked or frozen a service.

It writes ``token.txt`` (new for every computation, also in the outputs, so a record can be matched to
the folder it names), and ``big.bin`` of ``big_mb`` MiB (several multipart parts on S3) when asked.
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

NAME = "faulty"
DIR_ENV = "FAULT_DIR"
HOLD_LIMIT_S = 300.0
TOKEN_FILE = "token.txt"
BIG_FILE = "big.bin"


class FaultParams(BaseModel):
    analysis_name: str = NAME
    big_mb: int = Field(0, ge=0, le=512, description="Size of big.bin in MiB (0: none)")
    tag: str = Field("", description="Only to make distinct jobs")


class FaultOutputs(BaseModel):
    token: str = Field(description="New for every computation; also in token.txt")
    pid: int = Field(description="The process that computed")
    files: list[str] = Field(description="The result files the analysis wrote")


def fault_dir() -> Path | None:
    value = os.environ.get(DIR_ENV)
    return Path(value) if value else None


def run_faulty(job: Any, params: FaultParams, results_dir: Path, logger: logging.Logger) -> FaultOutputs:
    token = uuid.uuid4().hex
    folder = fault_dir()
    if folder is not None:
        fd = os.open(folder / "computations.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job.fingerprint} {os.getpid()} {token}\n".encode())
        finally:
            os.close(fd)
    files = [TOKEN_FILE]
    (results_dir / TOKEN_FILE).write_text(token + "\n")
    if params.big_mb:
        chunk = os.urandom(1024 * 1024)
        with (results_dir / BIG_FILE).open("wb") as handle:
            for _ in range(params.big_mb):
                handle.write(chunk)
        files.append(BIG_FILE)
    if folder is not None:
        # Its files are written (a run killed now leaves them in its scratch folder); say so, then wait.
        (folder / f"started.{job.fingerprint}.{os.getpid()}").touch()
        deadline = time.monotonic() + HOLD_LIMIT_S
        while (folder / "hold").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    logger.info("faulty computed %s (token %s)", job.fingerprint, token)
    return FaultOutputs(token=token, pid=os.getpid(), files=sorted(files))


faulty = Analysis(
    name=NAME,
    version="1.0",
    params=FaultParams,
    outputs=FaultOutputs,
    run=run_faulty,
    description="Test: signals its start, waits while held, writes a token and optionally a big file.",
)


def computations(folder: Path) -> list[tuple[str, int, str]]:
    """Every computation logged in ``folder``: (fingerprint, pid, token), in order."""
    path = folder / "computations.log"
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        fingerprint, pid, token = line.split()
        found.append((fingerprint, int(pid), token))
    return found
