"""Concurrency with real processes: several ``analysis-wrapper`` (and ``dagster``) processes on the same jobs.

Each test starts real subprocesses on one shared ``DAGSTER_HOME``, record store (SQLite, or MongoDB on the
session's SecantusDB server) and results storage (a local folder, or S3 on moto), serving the counting
analysis (``counting_analysis.py``, through ``ANALYSIS_MODULES``), and then checks what must hold however
the processes interleaved:

* every process exits 0, its ``run`` summary line adds up (and matches its per-job lines), and no
  traceback is in its stderr; a job reported "already done" names the run that computed it;
* every fingerprint was computed exactly once (the counting analysis logs each computation), except under
  ``--force``, where every computation is kept: exactly one current record per fingerprint (the last
  computation's) and one superseded record for every earlier one, none lost;
* every record, current or superseded, is consistent with its folder: the folder at its ``location`` has a
  ``metadata.nd.json`` with its fingerprint and run id (``analysis_wrapper.run_id``), exactly the files its
  outputs list plus ``outputs.json`` and ``metadata.nd.json``, and the token of the computation the
  record holds (in ``token.txt``, ``outputs.json`` and the record);
* every job is ``done`` with one attempt per computation; no fingerprint lease, scratch folder or partial
  folder is left behind;
* Dagster agrees: one ``recorded`` materialization per computation, naming the record's folder, and a
  downstream asset's input (``ResultsIOManager.load_input``) is the current record's outputs;
* ``results --include-superseded --json --files`` shows the same records and folder listings.

"Released together": each process imports everything first, says it is ready, and waits for a gate file
(created once all are ready); some trials instead start the real ``analysis-wrapper`` console script back
to back, so the processes meet wherever their start-up times put them. ``CONCURRENCY_REPEAT=N`` runs every
trial list N times (a soak run).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.ownership import fingerprint_key
from analysis_wrapper.registration import find_job_files, prepare_files
from analysis_wrapper.result_metadata import LOCATION_METADATA_KEY
from analysis_wrapper.store.base import JobState
from analysis_wrapper_tests.counting_analysis import NAME, counting, read_log
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.mongo_server import fresh_database_name
from analysis_wrapper_tests.shared_home import Setup, assert_record_matches_folder, folder_files

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MODULE = "analysis_wrapper_tests.counting_analysis"
N_JOBS = 5
PROCESS_TIMEOUT_S = 240.0
DEFAULT_BATCH: int | None = None  # no --batch-size: the CLI's default (20, so one batch run of all jobs)

# Import the heavy part first, say "ready", then wait for the gate and run the real entry point.
_GATE_PRELUDE = """
import os, sys, time
gate = sys.argv[1]
import analysis_wrapper.definitions
{imports}
open(f"{{gate}}.ready.{{os.getpid()}}", "w").close()
while not os.path.exists(gate):
    time.sleep(0.002)
"""
CLI_GATED = _GATE_PRELUDE.format(imports="from analysis_wrapper.cli import main") + (
    "sys.exit(main(sys.argv[2:]))\n"
)
# ``submit`` with the gate between opening the instance and registering: the CLI's instance set-up
# holds a lock, which staggers processes gated before it by its hold time; this aligns them at the
# registration itself (registry entries, then Dagster's dynamic partitions), as other timings may.
SUBMIT_GATED_AT_REGISTRATION = """
import os, sys, time
gate = sys.argv[1]
from analysis_wrapper.cli.app import build_parser
from analysis_wrapper.cli.jobs import register_paths
from analysis_wrapper.session import open_session
args = build_parser().parse_args(sys.argv[2:])
assert args.command == "submit"
ctx = open_session()
open(f"{gate}.ready.{os.getpid()}", "w").close()
while not os.path.exists(gate):
    time.sleep(0.002)
jobs, rejected, _verbs = register_paths(ctx, args.paths, args.analysis, sys.stdout)
print(f"{len(jobs)} job(s) registered, {rejected} file(s) rejected")
"""
DAGSTER_GATED = _GATE_PRELUDE.format(imports="from dagster._cli import main") + (
    "sys.argv = ['dagster', *sys.argv[2:]]\nsys.exit(main())\n"
)

REPEAT = int(os.environ.get("CONCURRENCY_REPEAT", "1"))
"""Run every trial list this many times (a soak run: ``CONCURRENCY_REPEAT=10 pytest -k concurrency``)."""
SUMMARY = re.compile(r"^(\d+) job\(s\): (.*); (\d+) file\(s\) rejected$")
OUTCOMES = ("done", "already done", "elsewhere", "dry run", "failed")
# "already done" with the record's folder and run when the job was run and skipped; without them when
# the job was found recorded before the process ran anything.
ALREADY_DONE = re.compile(rf"^already done\s+{NAME} (\S+)(?: (\S+) \(recorded by run ([0-9a-f]+)\))?$")


# ---- the shared environment -------------------------------------------------------------------


@pytest.fixture
def setup(
    request: pytest.FixtureRequest, tmp_path: Path, clean_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Setup]:
    """``request.param`` = (backend, storage). Nothing is started yet: see :func:`initialise`."""
    backend, storage = request.param
    env = dict(os.environ)
    for name in (
        "ANALYSIS_BUCKET",
        "AWS_ENDPOINT_URL",
        "DOCDB_URI",
        "DOCDB_DATABASE",
        "ALLOW_DIRTY",
        "GIT_COMMIT",
        "DISPATCH_INBOX",
        "COUNTING_LOG",
        "LEASE_TTL_S",
    ):
        env.pop(name, None)
    (tmp_path / "tmp").mkdir()
    env.update(
        DAGSTER_HOME=str(tmp_path / "home"),
        RESULTS_ROOT=str(tmp_path / "results"),
        DRY_RUN_ROOT=str(tmp_path / "dry_run"),
        DRY_RUN="0",
        CODE_REPOSITORY=str(clean_repo),
        ANALYSIS_MODULES=MODULE,
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        TMPDIR=str(tmp_path / "tmp"),  # the scratch folders, checked empty at the end
    )
    made = Setup(tmp_path, backend, storage, env)
    if backend == "mongodb":
        server = request.getfixturevalue("mongo_server")
        env.update(DOCDB_URI=server.uri, DOCDB_DATABASE=fresh_database_name("concurrency"))
        # The in-process IO manager's store resource reads the URI from there (an EnvVar).
        monkeypatch.setenv("DOCDB_URI", server.uri)
    if storage == "s3":
        made.s3 = request.getfixturevalue("moto_s3")
        made.bucket = made.s3.new_bucket("conc")
        env = made.env = {**env, **_aws_env(), "AWS_ENDPOINT_URL": made.s3.endpoint_url}
        env["ANALYSIS_BUCKET"] = f"{made.bucket}/results"
    try:
        yield made
    finally:
        made.close()


def initialise(setup: Setup) -> None:
    """One ``status`` creates the instance and the stores before anything races (the force and
    Dagster tests begin with one command alone, which does the same)."""
    done = run_cli(setup, "status")
    assert done.returncode == 0, done.stderr


def _aws_env() -> dict[str, str]:
    """The dummy credentials the ``aws_env`` fixture put in this process's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


BACKENDS = [
    pytest.param(("sqlite", "local"), id="sqlite-local"),
    pytest.param(("mongodb", "local"), id="mongodb-local"),
]
WITH_S3 = [*BACKENDS, pytest.param(("mongodb", "s3"), id="mongodb-s3")]


# ---- processes ----------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    args: list[str]
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    code: int | None = None

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def describe(self) -> str:
        return (
            f"--- {self.name}: {' '.join(self.args)} -> exit {self.code}\n"
            f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}"
        )


def run_cli(setup: Setup, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "analysis-wrapper"), *args],
        env=setup.env,
        cwd=setup.root,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT_S,
        check=False,
    )


def start_together(
    setup: Setup,
    commands: Sequence[tuple[str, list[str]]],
    env: dict[str, str],
    gated: bool = True,
    then: Sequence[tuple[str, list[str]]] = (),
    between: Callable[[Sequence[Proc]], None] | None = None,
) -> list[Proc]:
    """Start ``commands`` ((kind, args); kind "cli", "dagster" or "submit@register") and wait for them.

    ``gated``: each process imports first and waits for a gate file, created when all are ready;
    otherwise the real console scripts are started back to back. ``then``: more processes (gated),
    released once ``between(first processes)`` returned: events in a set order."""
    gate = setup.logs / f".gate-{uuid.uuid4().hex[:8]}"
    later = gate.with_name(f"{gate.name}-then")
    procs: list[Proc] = []
    for number, (kind, args, gate_file) in enumerate(
        [*((k, a, gate) for k, a in commands), *((k, a, later) for k, a in then)]
    ):
        if gated or gate_file is later:
            script = {
                "cli": CLI_GATED,
                "dagster": DAGSTER_GATED,
                "submit@register": SUBMIT_GATED_AT_REGISTRATION,
            }[kind]
            argv = [sys.executable, "-c", script, str(gate_file), *args]
        else:
            argv = [str(BIN / ("analysis-wrapper" if kind == "cli" else "dagster")), *args]
        name = f"{gate.name[1:]}-{number}-{kind}"
        out, err = setup.logs / f"{name}.out", setup.logs / f"{name}.err"
        with out.open("wb") as out_handle, err.open("wb") as err_handle:
            popen = subprocess.Popen(argv, env=env, cwd=setup.root, stdout=out_handle, stderr=err_handle)
        procs.append(Proc(name, [kind, *args], popen, out, err))
    began = time.monotonic()
    deadline = began + PROCESS_TIMEOUT_S
    waiting = (len(commands) if gated else 0) + len(then)
    try:
        while (
            len([*setup.logs.glob(f"{gate.name}.ready.*"), *setup.logs.glob(f"{later.name}.ready.*")])
            < waiting
        ):
            if any(p.popen.poll() is not None for p in procs):
                break  # one died before the gate: let the checks show why
            assert time.monotonic() < deadline, "the processes did not get ready in time"
            time.sleep(0.01)
        gate.touch()
        released = time.monotonic()
        if then:
            if between is not None:
                between(procs[: len(commands)])
            later.touch()
        for proc in procs:
            proc.code = proc.popen.wait(timeout=max(1.0, deadline - time.monotonic()))
        ended = time.monotonic()
        print(
            f"{gate.name[1:]}: {len(commands)} x {' '.join(commands[0][1][:2])}"
            f"{f' then {len(then)} x ' + ' '.join(then[0][1][:2]) if then else ''} "
            f"({'gated' if gated else 'popen'}): start-up {released - began:.1f} s, "
            f"then {ended - released:.1f} s"
        )
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait()
    return procs


def wait_for_claim(
    setup: Setup, fingerprint: str, procs: Sequence[Proc], timeout_s: float = 120.0, dry_run: bool = False
) -> None:
    """Until a run of ``procs`` holds the claim on ``fingerprint`` (it is computing it; ``dry_run``:
    the dry-run claim)."""
    key = fingerprint_key(fingerprint, dry_run)
    deadline = time.monotonic() + timeout_s
    while not setup.open_store().get_leases([key]):
        assert all(p.popen.poll() is None for p in procs), "the first process ended before it claimed " + (
            "\n".join(p.describe() for p in procs)
        )
        assert time.monotonic() < deadline, f"no claim on {fingerprint} within {timeout_s} s"
        time.sleep(0.02)


def assert_clean_exits(procs: Sequence[Proc]) -> None:
    report = "\n".join(p.describe() for p in procs)
    for proc in procs:
        assert proc.code == 0, report
        assert "Traceback" not in proc.stderr, report


def summary_counts(proc: Proc, expected_jobs: int) -> dict[str, int]:
    """The CLI ``run`` summary line as counts; checked to add up, and against the per-job lines."""
    lines = proc.stdout.splitlines()
    found = [SUMMARY.match(line) for line in lines]
    matches = [m for m in found if m]
    assert len(matches) == 1, proc.describe()
    total, parts, rejected = int(matches[0].group(1)), matches[0].group(2), int(matches[0].group(3))
    counts = {label: 0 for label in OUTCOMES}
    for part in parts.split(", "):
        number, _, label = part.partition(" ")
        assert label in counts, proc.describe()
        counts[label] = int(number)
    assert total == expected_jobs and rejected == 0, proc.describe()
    assert sum(counts.values()) == total, proc.describe()
    for label in OUTCOMES:
        per_job = sum(1 for line in lines if re.match(rf"^{label}\s+{NAME} ", line))
        assert per_job == counts[label], (label, proc.describe())
    return counts


def already_done(procs: Sequence[Proc]) -> list[tuple[str, str, str]]:
    """Every "already done" line of ``procs`` that names a run: (partition key, location, run id prefix)."""
    found = []
    for proc in procs:
        for line in proc.stdout.splitlines():
            if line.startswith("already done"):
                match = ALREADY_DONE.match(line)
                assert match, (line, proc.describe())
                if match.group(3):
                    found.append((match.group(1), match.group(2), match.group(3)))
    return found


def assert_already_done_names_the_computing_run(
    setup: Setup, jobs: Jobs, procs: Sequence[Proc], tokens: set[str]
) -> None:
    """A job a process did not compute is reported with the record of a computation of this trial
    (``tokens``): the one the other process made, not one it was replacing."""
    runs: dict[str, set[str]] = {key: set() for key in jobs.fingerprints}
    fp_key = {fp: key for key, fp in jobs.fingerprints.items()}
    for fp, records in records_by_fingerprint(setup, list(jobs.fingerprints.values())).items():
        for record in records:
            if record["processing"]["data_processes"][0]["output_parameters"]["token"] in tokens:
                runs[fp_key[fp]].add(record["analysis_wrapper"]["run_id"][:8])
    for key, location, run in already_done(procs):
        assert run in runs[key], (
            f"{key} reported already done by run {run} at {location}, not by a run of this trial "
            f"({sorted(runs[key])})\n" + "\n".join(p.describe() for p in procs)
        )


# ---- jobs, records and folders ------------------------------------------------------------------


@dataclass(frozen=True)
class Jobs:
    folder: Path
    fingerprints: dict[str, str]  # partition key -> fingerprint


def write_jobs(setup: Setup, name: str, n: int = N_JOBS, sleep_s: float = 0.3) -> Jobs:
    """``n`` job files of the counting analysis, each over its own small input file."""
    trial = setup.root / "trials" / name
    for i in range(n):
        source = trial / "inputs" / f"input_{i}.txt"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"input {i} of {name}\n" * (i + 1))
        write_job(trial / "jobs", [source], analysis=NAME, sleep_s=sleep_s)
    files, missing = find_job_files([trial / "jobs"])
    prepared = prepare_files(files, {NAME: counting})
    assert not missing and not prepared.rejected
    jobs = prepared.jobs[NAME]
    assert len({j.fingerprint for j in jobs}) == n
    return Jobs(trial / "jobs", {j.partition_key: j.fingerprint for j in jobs})


def trial_env(setup: Setup, name: str) -> tuple[dict[str, str], Path]:
    log = setup.root / "trials" / name / "computations.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    return {**setup.env, "COUNTING_LOG": str(log)}, log


def computations(logs: Sequence[Path], fingerprints: Sequence[str]) -> dict[str, list[str]]:
    """Per fingerprint, the tokens of its computations in these logs (in order); none of others."""
    tokens: dict[str, list[str]] = {fp: [] for fp in fingerprints}
    for log in logs:
        for fingerprint, _pid, token in read_log(log):
            assert fingerprint in tokens, f"{log}: a computation of an unknown fingerprint {fingerprint}"
            tokens[fingerprint].append(token)
    return tokens


def records_by_fingerprint(setup: Setup, fingerprints: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Every record (current and superseded) of each fingerprint, from the store."""
    found: dict[str, list[dict[str, Any]]] = {fp: [] for fp in fingerprints}
    for record in setup.open_store().find_records(NAME, include_superseded=True):
        fingerprint = record["analysis_wrapper"]["fingerprint"]
        if fingerprint in found:
            found[fingerprint].append(record)
    return found


def check_outcome(
    setup: Setup, jobs: Jobs, logs: Sequence[Path], force_baseline: dict[str, list[str]] | None = None
) -> dict[str, list[str]]:
    """The invariants of a finished trial; returns the tokens per fingerprint (every computation so far).

    Without ``force_baseline``: each fingerprint was computed exactly once and has one record, current.
    With it (the tokens before a ``--force`` trial): every computation is kept, one current record (the
    last computation's) and one superseded record for each earlier one."""
    fps = list(jobs.fingerprints.values())
    tokens = computations(logs, fps)
    if force_baseline is not None:
        tokens = {fp: [*force_baseline[fp], *tokens[fp]] for fp in fps}
    records = records_by_fingerprint(setup, fps)
    for fp in fps:
        current = [r for r in records[fp] if r["_id"] == fp]
        superseded = [r for r in records[fp] if r["_id"] != fp]
        if force_baseline is None:
            assert len(tokens[fp]) == 1, f"{fp} computed {len(tokens[fp])} times: {tokens[fp]}"
        else:
            new = len(tokens[fp]) - len(force_baseline[fp])
            assert 1 <= new <= len(logs) * 2, f"{fp}: {new} force computations ({tokens[fp]})"
        assert len(current) == 1, f"{fp}: {len(current)} current records"
        assert len(superseded) == len(tokens[fp]) - 1, (fp, len(superseded), tokens[fp])
        assert current[0]["analysis_wrapper"]["superseded_by"] is None
        assert current[0]["processing"]["data_processes"][0]["output_parameters"]["token"] == tokens[fp][-1]
        kept = sorted(r["processing"]["data_processes"][0]["output_parameters"]["token"] for r in records[fp])
        assert kept == sorted(tokens[fp]), f"{fp}: records {kept} != computations {tokens[fp]}"
        for record in superseded:
            assert record["_id"].startswith(f"{fp}.superseded-"), record["_id"]
            assert record["analysis_wrapper"]["superseded_by"] == fp
        for record in records[fp]:
            assert_record_matches_folder(setup, record)
    store = setup.open_store()
    entries = store.get_jobs(NAME, list(jobs.fingerprints))
    assert set(entries) == set(jobs.fingerprints)
    for key, entry in entries.items():
        fp = jobs.fingerprints[key]
        assert entry.state == JobState.DONE, (key, entry)
        assert entry.fingerprint == fp
        assert entry.attempts == len(tokens[fp]), (key, entry.attempts, tokens[fp])
    assert not store.get_leases([fingerprint_key(fp) for fp in fps]), "fingerprint leases left behind"
    assert not [p.name for p in setup.scratch.glob(f"{NAME}-*")], "scratch folders left behind"
    if setup.storage == "local" and setup.results_root.exists():
        assert not [p.name for p in setup.results_root.glob(".partial-*")], "partial folders left behind"
    return tokens


def check_cli_view(setup: Setup, fingerprints: Sequence[str]) -> None:
    """``results --include-superseded --json --files`` agrees with the store and the folders."""
    done = run_cli(setup, "results", "--analysis", NAME, "--include-superseded", "--json", "--files")
    assert done.returncode == 0, done.stderr
    listed = {r["_id"]: r for r in json.loads(done.stdout)}
    wanted = set(fingerprints)
    stored = {
        r["_id"]: r
        for r in setup.open_store().find_records(NAME, include_superseded=True)
        if r["analysis_wrapper"]["fingerprint"] in wanted
    }
    assert {k for k, r in listed.items() if r["analysis_wrapper"]["fingerprint"] in wanted} == set(stored)
    for record_id, record in stored.items():
        shown = listed[record_id]
        assert shown["location"] == record["location"]
        assert shown["analysis_wrapper"]["run_id"] == record["analysis_wrapper"]["run_id"]
        assert {f["name"] for f in shown["files"]} == set(folder_files(setup, record["location"]))
    current = [r["_id"] for r in setup.open_store().find_records(NAME) if r["_id"] in wanted]
    assert sorted(current) == sorted(wanted)


def assert_dagster_view_matches_records(
    setup: Setup, jobs: Jobs, computed: dict[str, list[str]]
) -> Counter[str]:
    """Dagster's view agrees with the records: each partition has one ``recorded`` materialization per
    computation (``computed``: tokens per fingerprint, every trial so far) naming the record's folder,
    and a downstream asset's input (``ResultsIOManager.load_input`` of the partition's latest
    materialization) is the current record's outputs. Returns how many materializations of these
    partitions had each status (``recorded``, ``skipped: being computed``, ...)."""
    from dagster import (
        AssetKey,
        AssetRecordsFilter,
        PartitionKeyRange,
        build_input_context,
        build_output_context,
    )

    store = setup.open_store()
    statuses: Counter[str] = Counter()
    asset = setup.counting_defs().asset
    instance = setup.instance()
    for key, fp in jobs.fingerprints.items():
        record = store.get_record(NAME, fp)
        assert record is not None
        found = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(counting.asset_name), asset_partitions=[key]), limit=100
        ).records
        history = []
        for item in found:  # newest first
            assert item.asset_materialization is not None
            metadata = {k: getattr(v, "value", v) for k, v in item.asset_materialization.metadata.items()}
            status = str(metadata.get("status", ""))
            statuses[re.sub(r" by run \S+$", "", status)] += 1
            history.append((item.run_id[:8], status, metadata.get(LOCATION_METADATA_KEY)))
        # A skip is an observation (the partition keeps showing its recorded materialization).
        for seen in instance.fetch_observations(
            AssetRecordsFilter(asset_key=AssetKey(counting.asset_name), asset_partitions=[key]), limit=100
        ).records:
            assert seen.asset_observation is not None
            status = str(getattr(seen.asset_observation.metadata.get("status"), "value", ""))
            statuses[re.sub(r" by run \S+$", "", status)] += 1
        recorded = [h for h in history if h[1] == "recorded"]
        assert len(recorded) == len(computed[fp]), (key, history)
        assert {h[2] for h in recorded} == {record["location"]}, (key, history)
        if history[0][1] != "recorded":
            print(
                f"{key}: the latest materialization is {history[0][1]!r} (stored after the one that recorded)"
            )
        upstream = build_output_context(
            asset_key=asset.key, definition_metadata=asset.metadata_by_key[asset.key]
        )
        context = build_input_context(
            upstream_output=upstream,
            asset_key=asset.key,
            asset_partition_key_range=PartitionKeyRange(key, key),
            asset_partitions_def=setup.counting_defs().partitions,
            instance=instance,
        )
        loaded = setup.io_manager().load_input(context)
        outputs = record["processing"]["data_processes"][0]["output_parameters"]
        assert loaded.model_dump(mode="json") == outputs, (key, history)
    return statuses


def run_args(jobs: Jobs | None, batch_size: int | None, force: bool = False) -> list[str]:
    args = ["run"]
    if jobs is not None:
        args.append(str(jobs.folder))
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    if force:
        args.append("--force")
    return args


# ---- the tests ----------------------------------------------------------------------------------

TRIALS = [  # (processes, --batch-size, gated)
    (4, 1, True),
    (4, DEFAULT_BATCH, False),
    (2, 1, False),
    (2, DEFAULT_BATCH, True),
] * REPEAT
S3_TRIALS = [(4, 1, True), (2, DEFAULT_BATCH, True)] * REPEAT


@pytest.mark.parametrize("setup", WITH_S3, indirect=True)
def test_concurrent_runs_compute_each_fingerprint_once(setup: Setup) -> None:
    """N ``run DIR`` processes on the same 5 job files: each fingerprint computed and recorded once."""
    initialise(setup)
    all_fps: list[str] = []
    claims_met = 0
    for n, batch_size, gated in S3_TRIALS if setup.storage == "s3" else TRIALS:
        name = setup.label(f"run-{n}x-batch{batch_size or 'default'}-{'gated' if gated else 'popen'}")
        jobs = write_jobs(setup, name)
        env, log = trial_env(setup, name)
        procs = start_together(setup, [("cli", run_args(jobs, batch_size))] * n, env, gated)
        assert_clean_exits(procs)
        counts = [summary_counts(p, N_JOBS) for p in procs]
        report = f"{name}: {counts}"
        assert sum(c["done"] for c in counts) == N_JOBS, report
        assert sum(c["already done"] for c in counts) == (n - 1) * N_JOBS, report
        assert not any(c["failed"] or c["elsewhere"] or c["dry run"] for c in counts), report
        tokens = check_outcome(setup, jobs, [log])
        assert_already_done_names_the_computing_run(
            setup, jobs, procs, {t for ts in tokens.values() for t in ts}
        )
        statuses = assert_dagster_view_matches_records(setup, jobs, tokens)
        print(f"{name}: materializations {dict(statuses)}")
        claims_met += statuses["skipped: being computed"]
        all_fps.extend(jobs.fingerprints.values())
    check_cli_view(setup, all_fps)
    assert claims_met, "no process ever met another's claim: the trials did not race"


FORCE_TRIALS = [(2, 1), (2, DEFAULT_BATCH)] * REPEAT
FORCE_SETUPS = [BACKENDS[0], WITH_S3[-1]]  # MongoDB with S3, SQLite with local folders


@pytest.mark.parametrize("setup", FORCE_SETUPS, indirect=True)
def test_concurrent_force_runs_keep_every_computation(setup: Setup) -> None:
    """Two ``run --force`` at once over recorded jobs: one current record per fingerprint, and a
    superseded record, consistent with its own folder, for every computation before the last."""
    name = setup.label("force")
    jobs = write_jobs(setup, name)
    env, first_log = trial_env(setup, name)
    (first,) = start_together(setup, [("cli", run_args(jobs, DEFAULT_BATCH))], env)
    assert_clean_exits([first])
    assert summary_counts(first, N_JOBS)["done"] == N_JOBS
    tokens = check_outcome(setup, jobs, [first_log])
    for n, batch_size in FORCE_TRIALS:
        trial = setup.label(f"force-{n}x-batch{batch_size or 'default'}")
        env, log = trial_env(setup, trial)
        procs = start_together(setup, [("cli", run_args(jobs, batch_size, force=True))] * n, env)
        assert_clean_exits(procs)
        counts = [summary_counts(p, N_JOBS) for p in procs]
        report = f"{trial}: {counts}"
        before = tokens
        tokens = check_outcome(setup, jobs, [log], force_baseline=before)
        new_computations = sum(len(tokens[fp]) - len(before[fp]) for fp in tokens)
        this_trial = {t for fp in tokens for t in tokens[fp][len(before[fp]) :]}
        assert_already_done_names_the_computing_run(setup, jobs, procs, this_trial)
        statuses = assert_dagster_view_matches_records(setup, jobs, tokens)
        print(f"{trial}: materializations {dict(statuses)}")
        assert sum(c["done"] for c in counts) == new_computations, report
        assert not any(c["failed"] or c["elsewhere"] or c["dry run"] for c in counts), report
    check_cli_view(setup, list(jobs.fingerprints.values()))


@pytest.mark.parametrize("setup", BACKENDS, indirect=True)
def test_concurrent_submits_then_concurrent_runs_of_the_registry(setup: Setup) -> None:
    """Three ``submit`` of the same files at once register each job once (registry and Dagster
    partitions), released at the start and released at the registration step; then two ``run`` with
    no arguments (every registered job) compute each once."""
    initialise(setup)
    registered: dict[str, str] = {}
    for kind in ("cli", "submit@register"):
        name = setup.label(f"submit-{kind.replace('@', '-at-')}")
        jobs = write_jobs(setup, name)
        registered.update(jobs.fingerprints)
        procs = start_together(setup, [(kind, ["submit", str(jobs.folder)])] * 3, setup.env)
        assert_clean_exits(procs)
        for proc in procs:
            assert f"{N_JOBS} job(s) registered, 0 file(s) rejected" in proc.stdout, proc.describe()
        entries = setup.open_store().list_jobs(NAME)
        assert sorted(e.partition_key for e in entries) == sorted(registered)
        assert {(e.state, e.attempts) for e in entries} == {(JobState.PENDING, 0)}
        assert sorted(setup.instance().get_dynamic_partitions(counting.partitions_name)) == sorted(registered)

    everything = Jobs(setup.root / "trials", registered)
    env, log = trial_env(setup, setup.label("run-registry"))
    procs = start_together(setup, [("cli", run_args(None, DEFAULT_BATCH))] * 2, env)
    assert_clean_exits(procs)
    counts = [summary_counts(p, len(registered)) for p in procs]
    assert sum(c["done"] for c in counts) == len(registered), counts
    assert not any(c["failed"] or c["elsewhere"] for c in counts), counts
    tokens = check_outcome(setup, everything, [log])
    assert_dagster_view_matches_records(setup, everything, tokens)


DAGSTER_TRIALS = [("dagster first", 1), ("cli first", DEFAULT_BATCH)] * REPEAT  # order, CLI --batch-size


@pytest.mark.parametrize("setup", BACKENDS, indirect=True)
def test_dagster_materialize_beside_a_cli_run_of_the_same_partitions(setup: Setup) -> None:
    """What the daemon does (a run of the result asset for one partition; here ``dagster asset
    materialize`` on the same instance) while ``analysis-wrapper run`` runs the same registered jobs.

    The order is set, not left to start-up times (a dagster process needs seconds more to reach its
    step): "dagster first" releases the CLI once the Dagster run holds the claim of the partition the CLI
    runs first (the CLI must wait for that run's record); "cli first" releases the dagster process once
    the CLI holds that claim (the Dagster run meets the CLI's claim or record, and ends skipped)."""
    trials = [(setup.label(f"dagster-{order.replace(' ', '-')}"), order, b) for order, b in DAGSTER_TRIALS]
    all_jobs = {name: write_jobs(setup, name, n=2, sleep_s=2.5) for name, _o, _b in trials}
    registered = run_cli(setup, "submit", *(str(j.folder) for j in all_jobs.values()))
    assert registered.returncode == 0, registered.stderr
    for name, order, batch_size in trials:
        jobs = all_jobs[name]
        first_key, first_fp = next(iter(jobs.fingerprints.items()))  # the CLI runs jobs in file order
        env, log = trial_env(setup, name)
        cli = ("cli", run_args(jobs, batch_size))
        materialize = (
            "dagster",
            [
                *("asset", "materialize", "-m", "analysis_wrapper.definitions"),
                *("--select", counting.asset_name, "--partition", first_key),
            ],
        )
        first, second = (materialize, cli) if order == "dagster first" else (cli, materialize)
        procs = start_together(
            setup, [first], env, then=[second], between=functools.partial(wait_for_claim, setup, first_fp)
        )
        cli_proc = procs[1] if order == "dagster first" else procs[0]
        assert_clean_exits(procs)
        counts = summary_counts(cli_proc, len(jobs.fingerprints))
        assert not (counts["failed"] or counts["elsewhere"]), cli_proc.describe()
        tokens = check_outcome(setup, jobs, [log])
        pids = {fp: pid for fp, pid, _t in read_log(log)}
        cli_pid = cli_proc.popen.pid
        assert sum(1 for fp in tokens if pids[fp] == cli_pid) == counts["done"], (pids, counts)
        # The first partition is computed by whoever was released first; the other by the CLI.
        assert (pids[first_fp] == cli_pid) == (order == "cli first"), (order, pids, cli_pid)
        assert_already_done_names_the_computing_run(
            setup, jobs, [cli_proc], {t for ts in tokens.values() for t in ts}
        )
        statuses = assert_dagster_view_matches_records(setup, jobs, tokens)
        print(f"{name}: materializations {dict(statuses)}; computed by {list(pids.values())} (CLI {cli_pid})")


@pytest.mark.parametrize("setup", BACKENDS[:1], indirect=True)
def test_posting_run_beside_a_dry_run_of_the_same_job_posts_it(setup: Setup) -> None:
    """``run --no-dry-run`` released while a ``run --dry-run`` of the same job computes it (holds the
    claim): the job is recorded all the same, by the posting run."""
    initialise(setup)
    name = setup.label("dry-run-then-post")
    jobs = write_jobs(setup, name, n=1, sleep_s=8.0)  # the posting run arrives within the 8 s
    ((key, fp),) = jobs.fingerprints.items()
    env, log = trial_env(setup, name)
    procs = start_together(
        setup,
        [("cli", [*run_args(jobs, 1), "--dry-run"])],
        env,
        then=[("cli", [*run_args(jobs, 1), "--no-dry-run"])],
        between=functools.partial(wait_for_claim, setup, fp, dry_run=True),
    )
    assert_clean_exits(procs)
    assert summary_counts(procs[0], 1)["dry run"] == 1
    posting = summary_counts(procs[1], 1)
    assert setup.open_store().get_record(NAME, fp) is not None, procs[1].describe()
    assert posting["done"] == 1, procs[1].describe()
    assert [e.state for e in setup.open_store().get_jobs(NAME, [key]).values()] == [JobState.DONE]
    assert procs[1].popen.pid in {pid for _fp, pid, _token in read_log(log)}  # computed by the posting run
