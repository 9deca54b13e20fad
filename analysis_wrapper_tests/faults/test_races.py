"""Races the other suites do not cover: concurrent FIRST starts on a fresh ``DAGSTER_HOME`` (issue 11 item 2).

The many-process races on an initialised home (N ``run`` on the same jobs, ``--force``, concurrent
``submit``, ``dagster asset materialize`` beside a CLI run, lifecycle and lease races) are in
``test_concurrency.py``, ``test_lifecycle.py`` and ``test_ownership.py``; this file adds what they leave
out: several processes starting together on an empty folder, where Dagster's storage schemas, the shipped
instance config and the record store are created. Two processes doing that unguarded break the folder
for good (Dagster stamps its alembic version twice: "more than one head"), so the CLI creates them under
a lock (``session.open_instance``).

* every command kind (``status``, ``submit``, ``run``, ``retry``, ``results``): 6 trials of 4 processes
  released together on a fresh home, each process a real one that imported everything first; every
  process exits 0 with no traceback, and a later command on that home works;
* the real console scripts started back to back on a fresh home: ``run`` + ``submit`` + ``status`` +
  ``results`` + a process evaluating the inbox sensor's tick (registering the same job files).

Not covered, and documented in the README as a known limit: Dagster's own processes (``dagster dev``,
``dagster-daemon``) starting together on an EMPTY folder; they create Dagster's schemas without any lock.

Counts go to the fault report: trials, duplicates (two records of one fingerprint, or a fingerprint
computed twice) and inconsistent records (a record whose folder is incomplete or holds other files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.store.base import JobState
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.counting_analysis import NAME, read_log
from analysis_wrapper_tests.environment import scrubbed_environ
from analysis_wrapper_tests.faults import report
from analysis_wrapper_tests.faults.scripts import TICK, WORKER
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.shared_home import Setup, assert_record_matches_folder

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KINDS = ("status", "submit", "run", "retry", "results")
TRIALS = 6
PROCESSES = 4
N_JOBS = 3
TIMEOUT_S = 240.0


def _env(home_root: Path, clean_repo: Path, inbox: Path | None = None) -> dict[str, str]:
    env = scrubbed_environ()
    (home_root / "tmp").mkdir(parents=True, exist_ok=True)
    env.update(
        DAGSTER_HOME=str(home_root / "home"),
        RESULTS_ROOT=str(home_root / "results"),
        DRY_RUN_ROOT=str(home_root / "dry_run"),
        DRY_RUN="0",
        CODE_REPOSITORY=str(clean_repo),
        ANALYSIS_MODULES="analysis_wrapper_tests.counting_analysis",
        COUNTING_LOG=str(home_root / "computations.log"),
        TMPDIR=str(home_root / "tmp"),
        DISPATCH_INBOX=str(inbox or home_root / "inbox"),
        INBOX_SETTLE_S="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    )
    return env


def _jobs(folder: Path, inputs: Path) -> Path:
    inputs.mkdir(parents=True, exist_ok=True)
    for i in range(N_JOBS):
        source = inputs / f"input_{i}.txt"
        source.write_text(f"race input {i}\n" * (i + 1))
        write_job(folder, [source], analysis=NAME, sleep_s=0.0)
    return folder


def _args(kind: str, jobs: Path) -> list[str]:
    return {"submit": ["submit", str(jobs)], "run": ["run", str(jobs)]}.get(kind, [kind])


class Tally:
    """Trials, duplicates and inconsistent records over this file's tests, reported at the end."""

    trials = 0
    duplicates = 0
    inconsistent = 0


@pytest.fixture(scope="module")
def tally() -> Iterator[type[Tally]]:
    yield Tally
    report.record("races", trials=Tally.trials, duplicates=Tally.duplicates, inconsistent=Tally.inconsistent)


def check_home(home_root: Path, env: dict[str, str], ran: bool) -> list[str]:
    """What must hold on a home after its race: the Dagster instance opens (one alembic head per
    storage), every fingerprint has one record computed once, every record matches its folder.
    Counts duplicates and inconsistent records into the tally; returns the problems found."""
    from dagster import DagsterInstance, RunsFilter

    problems: list[str] = []
    instance = DagsterInstance.from_config(str(home_root / "home"))
    try:
        instance.get_runs_count(RunsFilter())
        instance.get_dynamic_partitions(f"{NAME}_partitions")
    except Exception as exc:  # a broken home is what this test is about: say what broke
        problems.append(f"{home_root}: the Dagster instance does not open: {type(exc).__name__}: {exc}")
    finally:
        instance.dispose()
    store = SqliteStore(home_root / "home" / "analysis_records.sqlite")
    try:
        records = store.find_records(NAME, include_superseded=True)
        by_fp = Counter(r["analysis_wrapper"]["fingerprint"] for r in records)
        computed = Counter(fp for fp, _pid, _token in read_log(Path(env["COUNTING_LOG"])))
        duplicates = sum(n - 1 for n in by_fp.values() if n > 1) + sum(
            n - 1 for n in computed.values() if n > 1
        )
        Tally.duplicates += duplicates
        if duplicates:
            problems.append(f"{home_root}: duplicates {dict(by_fp)} computed {dict(computed)}")
        setup = Setup(home_root, "sqlite", "local", env)
        for record in records:
            try:
                assert_record_matches_folder(setup, record)
            except AssertionError as exc:
                Tally.inconsistent += 1
                problems.append(f"{home_root}: inconsistent record {record['_id']}: {exc}")
        if ran:
            entries = store.list_jobs(NAME)
            if len(by_fp) != N_JOBS or {e.state for e in entries} != {JobState.DONE}:
                problems.append(f"{home_root}: {len(by_fp)} records, states {[e.state for e in entries]}")
    finally:
        store.close()
    return problems


def test_concurrent_first_starts_of_every_command_leave_a_working_home(
    tmp_path: Path, clean_repo: Path, tally: type[Tally]
) -> None:
    jobs = _jobs(tmp_path / "jobs", tmp_path / "inputs")
    plans: list[list[dict[str, Any]]] = [[] for _ in range(PROCESSES)]
    homes: list[tuple[str, Path, dict[str, str]]] = []
    for kind in KINDS:
        for trial in range(TRIALS):
            root = tmp_path / f"{kind}-{trial}"
            env = _env(root, clean_repo)
            homes.append((kind, root, env))
            gate = str(root / "gate")
            for number, plan in enumerate(plans):
                step = root / f"p{number}"
                plan.append(
                    {
                        "gate": gate,
                        "env": env,
                        "args": _args(kind, jobs),
                        "out": f"{step}.out",
                        "err": f"{step}.err",
                        "code": f"{step}.code",
                    }
                )
            # then one later command on the home, by the first worker alone
            plans[0].append(
                {
                    "gate": gate + "-later",
                    "env": env,
                    "args": ["status", "--json"],
                    "out": str(root / "later.out"),
                    "err": str(root / "later.err"),
                    "code": str(root / "later.code"),
                }
            )
    workers = []
    for number, plan in enumerate(plans):
        plan_file = tmp_path / f"plan-{number}.json"
        plan_file.write_text(json.dumps(plan))
        log = (tmp_path / f"worker-{number}.log").open("wb")
        workers.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(plan_file), str(number)],
                env=homes[0][2],
                cwd=tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for _kind, root, _env_of in homes:
            gate = root / "gate"
            while len(list(root.glob("gate.ready.*"))) < PROCESSES:
                assert all(w.poll() is None for w in workers), "a worker died"
                assert time.monotonic() < deadline, f"{root.name}: the workers did not get ready"
                time.sleep(0.005)
            gate.touch()  # all four start on the fresh home at once
            while len(list(root.glob("p*.code"))) < PROCESSES:
                assert all(w.poll() is None for w in workers), "a worker died"
                assert time.monotonic() < deadline, f"{root.name}: the commands did not end"
                time.sleep(0.01)
            (root / "gate-later").touch()
            while not (root / "later.code").exists():
                assert workers[0].poll() is None, "worker 0 died"
                assert time.monotonic() < deadline, f"{root.name}: the later command did not end"
                time.sleep(0.01)
        for worker in workers:
            assert worker.wait(timeout=60) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    problems: list[str] = []
    for kind, root, env in homes:
        tally.trials += 1
        for step in [*(root / f"p{n}" for n in range(PROCESSES)), root / "later"]:
            code = Path(f"{step}.code").read_text()
            err = Path(f"{step}.err").read_text(errors="replace")
            if code != "0" or "Traceback" in err:
                problems.append(f"{step} ({kind}): exit {code}\n{err[-1500:]}")
        later = json.loads((root / "later.out").read_text())
        expected = N_JOBS if kind in ("submit", "run") else 0
        if len(later) != expected:
            problems.append(f"{root}: the later status lists {len(later)} jobs, not {expected}")
        problems += check_home(root, env, ran=kind == "run")
    assert not problems, "\n".join(problems)


def test_real_console_scripts_and_a_sensor_tick_together_on_a_fresh_home(
    tmp_path: Path, clean_repo: Path, tally: type[Tally]
) -> None:
    """``run``, ``submit``, ``status``, ``results`` (the console script, no gate: they meet wherever their
    start-up puts them) and the inbox sensor's tick, on one empty folder."""
    inbox = tmp_path / "inbox"
    _jobs(inbox, tmp_path / "inputs")  # the tick registers these; run and submit get the same files
    env = _env(tmp_path, clean_repo, inbox)
    jobs_copy = tmp_path / "jobs"
    jobs_copy.mkdir()
    for path in inbox.glob("*.json"):
        (jobs_copy / path.name).write_bytes(path.read_bytes())
    commands = [
        [str(BIN / "analysis-wrapper"), "run", str(jobs_copy)],
        [str(BIN / "analysis-wrapper"), "submit", str(jobs_copy)],
        [str(BIN / "analysis-wrapper"), "status"],
        [str(BIN / "analysis-wrapper"), "results"],
        [sys.executable, "-c", TICK, f"{NAME}_inbox_sensor"],
    ]
    procs = []
    for number, argv in enumerate(commands):
        out = (tmp_path / f"c{number}.out").open("wb")
        err = (tmp_path / f"c{number}.err").open("wb")
        procs.append((argv, subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=out, stderr=err)))
    problems = []
    for number, (argv, proc) in enumerate(procs):
        code = proc.wait(timeout=TIMEOUT_S)
        err = (tmp_path / f"c{number}.err").read_text(errors="replace")
        if code != 0 or "Traceback" in err:
            problems.append(f"{' '.join(argv[-2:])}: exit {code}\n{err[-2000:]}")
    tally.trials += 1
    later = subprocess.run(
        [str(BIN / "analysis-wrapper"), "status", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    if later.returncode != 0:
        problems.append(f"later status: exit {later.returncode}\n{later.stderr[-2000:]}")
    else:
        listed = json.loads(later.stdout)
        if len(listed) != N_JOBS or {e["state"] for e in listed} != {"done"}:
            problems.append(f"later status: {listed}")
    problems += check_home(tmp_path, env, ran=True)
    assert not problems, "\n".join(problems)
