"""The fault suite's working set-up: one DAGSTER_HOME, record store and results storage shared by real
``analysis-wrapper`` processes (and the test, which reads the store, the folders and S3 directly), serving
the fault analysis (:mod:`analysis_wrapper_tests.faults.fault_analysis`).

:meth:`Workspace.check_recovered` is what every crash and outage must leave once the service is back and
one more run went through: each job ``done`` and recorded exactly once, every record's folder complete
and the one of the computation the record holds, and nothing left that would break or bloat later runs
(no scratch folder of a dead process, no partial folder, no unfinished multipart upload, no lease).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis_wrapper.resources.results_storage import OUTPUTS_FILE, RECORD_FILE
from analysis_wrapper.resources.s3_storage import S3ResultsStorage
from analysis_wrapper.scratch import ROOT_NAME, Owner
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.environment import scrubbed_environ
from analysis_wrapper_tests.faults.fault_analysis import NAME, TOKEN_FILE, computations
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.s3_servers import S3Endpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODULE = "analysis_wrapper_tests.faults.fault_analysis"
PROCESS_TIMEOUT_S = 180.0
# Short S3 waits, so an outage costs seconds: bounded by 2 attempts of 1 s to connect and 2 s to answer.
S3_WAITS = {"S3_CONNECT_TIMEOUT_S": "1", "S3_READ_TIMEOUT_S": "2", "S3_MAX_ATTEMPTS": "2"}
S3_WAIT_BOUND_S = 3 * 2 * (1 + 2 + 1) + 40  # x3: requests in flight finish theirs; slack for a busy machine


def wait_until(
    what: str, check: Callable[[], bool], timeout_s: float = 60.0, procs: Sequence[Any] = ()
) -> None:
    """Poll ``check`` until true; fail naming ``what`` (and any process of ``procs`` that ended)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        for proc in procs:
            if proc.poll() is not None:
                raise AssertionError(
                    f"{proc.name} ended (exit {proc.poll()}) while waiting for {what}:\n{proc.output()}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Proc:
    """A process the suite started, in its own session (a SIGKILL to its group reaches everything)."""

    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path

    def poll(self) -> int | None:
        return self.popen.poll()

    def output(self) -> str:
        return (
            f"--- {self.name} stdout:\n{self.out.read_text(errors='replace')[-4000:]}\n"
            f"--- stderr:\n{self.err.read_text(errors='replace')[-4000:]}"
        )

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the whole group: nothing gets to clean up."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=30)

    def wait(self, timeout_s: float = PROCESS_TIMEOUT_S) -> int:
        try:
            return self.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"{self.name} did not end within {timeout_s:.0f} s:\n{self.output()}"
            ) from None


@dataclass
class Workspace:
    """One shared set-up of the fault suite (SQLite records unless ``DOCDB_URI`` is set in ``env``)."""

    root: Path
    env: dict[str, str]
    s3: S3Endpoint | None = None
    bucket: str = ""
    procs: list[Proc] = field(default_factory=list)
    _serial: int = 0
    _inputs: int = 0
    _store: Any = None

    @classmethod
    def make(cls, root: Path, code_repository: Path, **env: str) -> Workspace:
        base = scrubbed_environ(keep_aws_credentials=True)
        for name in ("tmp", "faults", "logs", "jobs", "inputs"):
            (root / name).mkdir(parents=True, exist_ok=True)
        base.update(
            DAGSTER_HOME=str(root / "home"),
            RESULTS_ROOT=str(root / "results"),
            DRY_RUN_ROOT=str(root / "dry_run"),
            DRY_RUN="0",
            CODE_REPOSITORY=str(code_repository),
            ANALYSIS_MODULES=MODULE,
            FAULT_DIR=str(root / "faults"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
            PYTHONUNBUFFERED="1",
            TMPDIR=str(root / "tmp"),  # where the scratch folders go
            **env,
        )
        return cls(root, base)

    def use_s3(self, endpoint: S3Endpoint, bucket: str) -> None:
        self.s3, self.bucket = endpoint, bucket
        self.env.update(
            ANALYSIS_BUCKET=f"{bucket}/results",
            AWS_ENDPOINT_URL=endpoint.endpoint_url,
            AWS_ACCESS_KEY_ID=endpoint.access_key,
            AWS_SECRET_ACCESS_KEY=endpoint.secret_key,
            AWS_DEFAULT_REGION=endpoint.region,
            **S3_WAITS,
        )

    # ---- paths ---------------------------------------------------------------------------------
    @property
    def faults(self) -> Path:
        return self.root / "faults"

    @property
    def results(self) -> Path:
        return self.root / "results"

    @property
    def scratch_root(self) -> Path:
        return self.root / "tmp" / ROOT_NAME

    @property
    def sqlite_path(self) -> Path:
        return self.root / "home" / "analysis_records.sqlite"

    # ---- jobs ----------------------------------------------------------------------------------
    def job(self, **params: Any) -> Path:
        """A job file for the fault analysis over a new small input file."""
        self._inputs += 1
        source = self.root / "inputs" / f"input-{self._inputs}.bin"
        source.write_bytes(os.urandom(64))
        return write_job(self.root / "jobs", [source], analysis=NAME, **params)

    def hold(self) -> None:
        (self.faults / "hold").touch()

    def release(self) -> None:
        (self.faults / "hold").unlink(missing_ok=True)

    def started(self) -> list[str]:
        """Fingerprints whose computation began (in any process)."""
        return [p.name.split(".")[1] for p in self.faults.glob("started.*")]

    # ---- processes -----------------------------------------------------------------------------
    def start(self, *args: str, label: str = "cli", env: dict[str, str] | None = None) -> Proc:
        """``analysis-wrapper ARGS`` in the background."""
        return self.spawn([str(BIN / "analysis-wrapper"), *args], label, env)

    def spawn(self, argv: Sequence[str], label: str, env: dict[str, str] | None = None) -> Proc:
        """Any command, in its own session, with the workspace's environment (plus ``env``)."""
        self._serial += 1
        name = f"{self._serial:02d}-{label}"
        out, err = self.root / "logs" / f"{name}.out", self.root / "logs" / f"{name}.err"
        with out.open("wb") as out_handle, err.open("wb") as err_handle:
            popen = subprocess.Popen(
                list(argv),
                env={**self.env, **(env or {})},
                cwd=self.root,
                stdout=out_handle,
                stderr=err_handle,
                start_new_session=True,
            )
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, label: str = "cli", env: dict[str, str] | None = None) -> Proc:
        proc = self.start(*args, label=label, env=env)
        proc.wait()
        return proc

    def close_store(self) -> None:
        """Close the test's own store client (reopened on next use)."""
        if self._store is not None:
            self._store.close()
            self._store = None

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        self.close_store()

    # ---- what is stored ------------------------------------------------------------------------
    def store(self) -> Any:
        if self._store is None:
            if "DOCDB_URI" in self.env:
                from analysis_wrapper.store.mongo import MongoStore

                self._store = MongoStore(
                    self.env["DOCDB_URI"], database=self.env.get("DOCDB_DATABASE", "analysis")
                )
            else:
                from analysis_wrapper.store.sqlite import SqliteStore

                self._store = SqliteStore(self.sqlite_path)
        return self._store

    def records(self) -> dict[str, dict[str, Any]]:
        return {r["_id"]: r for r in self.store().find_records(NAME)}

    def jobs(self) -> dict[str, Any]:
        return {e.partition_key: e for e in self.store().find_jobs(NAME, limit=10_000)}

    def storage(self) -> S3ResultsStorage:
        assert self.s3 is not None
        return S3ResultsStorage(self.s3.client(), self.bucket, "results")

    def unfinished_uploads(self) -> list[dict[str, Any]]:
        return self.storage().unfinished_uploads("results/")

    def scratch_owners(self) -> list[str]:
        """The owner folders (one per process) under the scratch root."""
        return sorted(p.name for p in self.scratch_root.iterdir()) if self.scratch_root.exists() else []

    def describe_scratch(self) -> str:
        """Each owner folder left, whether its process lives (and what it is), and what it holds."""
        lines = []
        for name in self.scratch_owners():
            owner = Owner.parse(name)
            alive = owner is not None and not owner.gone()
            try:
                command = Path(f"/proc/{owner.pid if owner else 0}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                command = b"(gone)"
            held = sorted(
                p.relative_to(self.scratch_root).as_posix() for p in (self.scratch_root / name).rglob("*")
            )
            lines.append(f"{name}: alive={alive} {command.decode(errors='replace')[:200]} holds {held[:10]}")
        return "\n".join(lines)

    def folder_files(self, location: str) -> dict[str, bytes]:
        """The files of a recorded folder: name -> bytes (local path or s3:// URI)."""
        if location.startswith("s3://"):
            storage = self.storage()
            name = location.rstrip("/").rpartition("/")[2]
            return {f.name: storage.read_bytes(name, f.name) for f in storage.list_files(name)}
        folder = Path(location)
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    def check_recovered(self, job_files: Sequence[Path]) -> None:
        """Every job of ``job_files`` done and recorded once, with a complete folder; nothing left behind."""
        jobs = self.jobs()
        records = self.records()
        fingerprints = {e.fingerprint for e in jobs.values()}
        assert len(jobs) == len(job_files), sorted(jobs)
        assert {e.state for e in jobs.values()} == {JobState.DONE}, {k: e.state for k, e in jobs.items()}
        assert set(records) == fingerprints, "exactly one record per job's fingerprint"
        tokens = {token: fp for fp, _, token in computations(self.faults)}
        for fp, record in records.items():
            files = self.folder_files(record["location"])
            outputs = record["processing"]["data_processes"][0]["output_parameters"]
            assert sorted(files) == sorted([*outputs["files"], OUTPUTS_FILE, RECORD_FILE]), (
                fp,
                sorted(files),
            )
            assert json.loads(files[RECORD_FILE])["_id"] == fp
            meta = json.loads(files[RECORD_FILE])["analysis_wrapper"]
            assert meta["run_id"] == record["analysis_wrapper"]["run_id"], "the folder is the record's run's"
            assert files[TOKEN_FILE].decode().strip() == outputs["token"], (
                "the folder is the record's computation"
            )
            assert tokens.get(outputs["token"]) == fp, "the token is of a logged computation of this job"
        # nothing left that would break or bloat later runs
        assert self.scratch_owners() == [], f"scratch left behind: {self.describe_scratch()}"
        if self.results.exists():
            assert not [p.name for p in self.results.iterdir() if p.name.startswith(".partial-")]
        if self.s3 is not None:
            assert self.unfinished_uploads() == [], "unfinished multipart uploads left behind"
        leases = self.store().get_leases([f"fingerprint:{fp}" for fp in fingerprints])
        assert leases == {}, f"fingerprint leases left: {sorted(leases)}"

    def computed(self) -> Counter[str]:
        return Counter(fp for fp, _, _ in computations(self.faults))


HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=60, isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def sqlite_locked(path: Path) -> Iterator[subprocess.Popen[str]]:
    """A separate process holding ``BEGIN EXCLUSIVE`` on the SQLite store at ``path`` until the block ends
    (as another writer stuck in a transaction would)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
