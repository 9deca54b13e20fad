"""Many hosts end to end: webserver, daemon and code server as separate "machines" that share only the
network (PostgreSQL, S3, MongoDB, and the S3 inbox in it).

Topology (``hosts.host_network``; as root each host is a network namespace with its own address and
its own host name, see ``hosts.py``):

* the root namespace is "the network": a bridge with ``10.x.y.1`` where this test starts PostgreSQL
  (Dagster's storage, ``deploy/dagster.yaml``), SeaweedFS (S3: inputs, the inbox, results) and SecantusDB
  (MongoDB: records, job registry, leases), each bound to that address only;
* ``codeserver`` (``10.x.y.2``): ``dagster api grpc -m analysis_wrapper.definitions`` on port 4000. It
  evaluates the sensors and its children are the run workers, so it is the only host with the
  analysis settings (``DOCDB_URI``, ``ANALYSIS_BUCKET``, ``DISPATCH_INBOX``…);
* ``daemon`` (``10.x.y.3``): ``dagster-daemon run`` with a workspace naming the code server's address;
* ``webserver`` (``10.x.y.4``): ``dagster-webserver`` with the same kind of workspace; its GraphQL is
  asked from the root namespace.

Each host has its own working folder (cwd, ``HOME``, ``TMPDIR``) and its own ``DAGSTER_HOME`` holding a
copy of ``deploy/dagster.yaml``. The package source is the one work tree on this one disk (PYTHONPATH):
a limitation of simulating machines on one machine; ``GIT_CEILING_DIRECTORIES`` hides its git tree, so
the code server's code state comes from ``GIT_COMMIT`` as on a host with an installed image.

200 job files are dropped into the S3 inbox; while jobs run, the code server (with its run workers: one
process group) is killed with SIGKILL and started again on the same address. Every job must end recorded
exactly once, and no host's local path may show up in another host's config, in a record, in the registry
or in a result, nor anything of one host be written into another host's folder.

Two choices, and why:

* Each host's ``dagster.yaml`` is ``deploy/dagster.yaml`` plus ``COMPUTE_LOGS_IN_S3`` (captured output in
  S3). With the shipped file alone, the code server's run workers and sensor ticks write their captured
  output to ``<the daemon's DAGSTER_HOME>/storage/...``: Dagster sends the daemon's instance config (its
  ``InstanceRef``, with the default compute log manager's literal ``base_dir``) to the code server.
* The files go to ``<inbox>/counting/``, not the top level: there every file would first be moved into
  that folder by whichever sensor reads it first, doubling the S3 moves (about 10 s here).

Without root (or with ``AW_NETNS=0``) the hosts are plain processes on 127.0.0.1 with the same host name;
the test says so and checks everything else. About 3.5 to 4 minutes on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import sys
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis_wrapper.ownership import run_lease_key
from analysis_wrapper.registration import prepare_files
from analysis_wrapper.sensors import run_partition_keys
from analysis_wrapper.store.base import JobState
from analysis_wrapper.store.mongo import MongoStore
from analysis_wrapper_tests import postgres_server as pg
from analysis_wrapper_tests.counting_analysis import RESULT_FILES, TOKEN_FILE, counting, read_log
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.hosts import Host, Network, host_network
from analysis_wrapper_tests.mongo_server import MongoServer, start_mongo_server
from analysis_wrapper_tests.s3_servers import ACCESS_KEY, REGION, SECRET_KEY, S3Endpoint, start_weed
from analysis_wrapper_tests.servers import ServerProcess, free_port, log_tail

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY_INSTANCE_YAML = REPO_ROOT / "deploy" / "dagster.yaml"
BIN = Path(sys.executable).parent
N_JOBS = 200
N_INPUTS = 5
BATCH_SIZE = 25
FAST_SLEEP_S = 0.05
SLOW_SLEEP_S = 3.0  # every 40th job: the kill lands while one of these computes
DONE_BEFORE_KILL = 30  # records that exist before the kill: the kill lands in the middle of the work
GIT_SHA = "0123456789abcdef0123456789abcdef01234567"
LOCATION_NAME = "analysis_wrapper"
HOST_NAMES = ("codeserver", "daemon", "webserver")
START_TIMEOUT_S = 120.0
FINISH_TIMEOUT_S = 300.0
COMPUTE_LOGS_IN_S3 = """
# Added by test_many_hosts.py: captured step and sensor output in S3, not under a DAGSTER_HOME.
# The daemon hands its own instance config to the code server (Dagster's InstanceRef), so with
# the default compute log manager, the code server's run workers and sensor ticks write to
# <the daemon's DAGSTER_HOME>/storage: a local path of one host used by another.
compute_logs:
  module: dagster_aws.s3.compute_log_manager
  class: S3ComputeLogManager
  config:
    bucket: {env: DAGSTER_COMPUTE_LOG_BUCKET}
    prefix: compute-logs
    endpoint_url: {env: AWS_ENDPOINT_URL}
    use_ssl: false
    local_dir: {env: DAGSTER_COMPUTE_LOG_DIR}  # each host stages in a folder of its own
"""


# ---- the hosts' processes: servers of the one launcher, each run on its host ----------------------------
def host_process(
    host: Host, argv: list[str], cwd: Path, env: dict[str, str], log_path: Path
) -> ServerProcess:
    """One long-running process of one host (:meth:`Host.wrap`), in its own process group."""
    return ServerProcess(host.name, argv, log_path, cwd=cwd, env=env, host=host)


@dataclass
class Cluster:
    """Everything one test run started; ``report()`` is what a failure prints."""

    root: Path
    network: Network
    folders: dict[str, Path] = field(default_factory=dict)
    processes: dict[str, ServerProcess] = field(default_factory=dict)
    service_logs: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    began: float = field(default_factory=time.monotonic)

    def mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self.began, 1)
        print(f"[{self.timings[what]:6.1f} s] {what}", flush=True)

    def stop_hosts(self) -> None:
        for process in self.processes.values():
            process.stop(20, require_group_gone=True)

    def report(self) -> str:
        parts = [f"network: {self.network.describe()}", f"timings: {self.timings}"]
        for name, process in self.processes.items():
            parts.append(f"--- {name} ({process.log_path}) ---\n{process.tail(60)}")
        for name, path in self.service_logs.items():
            parts.append(f"--- {name} ({path}) ---\n{log_tail(path, 20)}")
        return "\n".join(parts)

    def wait_for(
        self,
        what: str,
        check: Callable[[], bool],
        timeout_s: float,
        every_s: float = 0.5,
        explain: Callable[[], str] | None = None,
    ) -> None:
        """Wait until ``check()``; a timeout fails with ``explain()`` (what is still unfinished)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for name, process in self.processes.items():
                if process.proc is not None and not process.alive:
                    pytest.fail(f"{name} exited with {process.returncode} while waiting for {what}")
            if check():
                self.mark(what)
                return
            if time.monotonic() > deadline:
                detail = f"\n{explain()}" if explain is not None else ""
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
            time.sleep(every_s)


def host_folder(root: Path, host: Host, instance_yaml: str) -> Path:
    """A host's own folder: cwd, HOME, TMPDIR and DAGSTER_HOME (with ``deploy/dagster.yaml``)."""
    folder = root / "hosts" / host.name
    (folder / "dagster_home").mkdir(parents=True)
    (folder / "tmp").mkdir()
    (folder / "dagster_home" / "dagster.yaml").write_text(instance_yaml)
    return folder


def base_env(folder: Path) -> dict[str, str]:
    """What any host's process gets, whatever it runs: nothing of this (the test's) process."""
    return {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
        "HOME": str(folder),
        "TMPDIR": str(folder / "tmp"),
        "DAGSTER_HOME": str(folder / "dagster_home"),
        "DAGSTER_COMPUTE_LOG_DIR": str(folder / "tmp" / "compute_logs"),
        # The package and its tests come from the one shared work tree (one disk); not its git state.
        "PYTHONPATH": str(REPO_ROOT),
        "GIT_CEILING_DIRECTORIES": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def grpc_ping(address: str, port: int) -> bool:
    from dagster._grpc.client import DagsterGrpcClient

    try:
        DagsterGrpcClient(port=port, host=address).ping("hello")
        return True
    except Exception:
        return False


def http_get(url: str, timeout_s: float = 5) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            return dict(json.loads(answer.read()))
    except (OSError, ValueError):
        return None


def graphql(base_url: str, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{base_url}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = json.loads(answer.read())
    assert not body.get("errors"), body
    return dict(body["data"])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with host_network(HOST_NAMES) as network:
        print(f"\nmany hosts: {network.describe()}", flush=True)
        if not network.isolated:
            print(
                "WARNING: network namespaces could not be made; the hosts are plain processes on "
                "127.0.0.1 with separate folders (everything is checked except network isolation)",
                flush=True,
            )
        cluster = Cluster(tmp_path, network)
        failed = True
        try:
            yield cluster
            failed = False
        finally:
            cluster.stop_hosts()
            if failed:  # pytest shows it with the failure ("Captured stdout teardown")
                print(cluster.report(), flush=True)


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_hosts_sharing_only_the_network_record_every_job_once_over_a_code_server_kill(
    cluster: Cluster, tmp_path: Path
) -> None:
    network = cluster.network
    address = network.service_address
    subnet = network.subnet or "127.0.0.1/32"
    services = tmp_path / "services"
    services.mkdir()

    # ---- the network's services -----------------------------------------------------------------------
    with contextlib.ExitStack() as stack:
        postgres = pg.start_postgres_server(address=address, allow_subnet=subnet)
        stack.callback(postgres.remove)
        stack.callback(postgres.stop)
        assert postgres.log_path is not None
        cluster.service_logs["postgres"] = postgres.log_path
        database = postgres.new_database("many_hosts")

        weed = start_weed(services / "seaweed", address=address, timeout_s=60)
        stack.callback(weed.stop)
        s3 = weed.endpoint
        cluster.service_logs["seaweedfs"] = services / "seaweed" / "weed.log"
        bucket = s3.new_bucket("hosts")
        log_bucket = s3.new_bucket("logs")

        mongo = start_mongo_server(services / "mongo", address=address)
        stack.callback(mongo.kill)
        assert mongo.log_path is not None
        cluster.service_logs["secantusdb"] = mongo.log_path
        docdb_database = f"hosts_{uuid.uuid4().hex[:12]}"
        cluster.mark("services up (PostgreSQL, SeaweedFS, SecantusDB)")

        stack.callback(cluster.stop_hosts)  # first: the hosts go before the network's services do
        run_hosts(cluster, postgres, database, s3, bucket, log_bucket, mongo, docdb_database)


def run_hosts(
    cluster: Cluster,
    postgres: pg.PostgresServer,
    database: str,
    s3: S3Endpoint,
    bucket: str,
    log_bucket: str,
    mongo: MongoServer,
    docdb_database: str,
) -> None:
    network = cluster.network
    hosts = network.hosts
    root = cluster.root
    isolated = network.isolated
    grpc_port = 4000 if isolated else free_port(hosts["codeserver"].address)
    web_port = 3000 if isolated else free_port(hosts["webserver"].address)
    instance_yaml = DEPLOY_INSTANCE_YAML.read_text()
    if "compute_logs:" not in instance_yaml:
        instance_yaml += COMPUTE_LOGS_IN_S3
    logs = root / "logs"
    logs.mkdir()
    folders = {name: host_folder(root, host, instance_yaml) for name, host in hosts.items()}
    cluster.folders = folders
    workspace = {
        "load_from": [
            {
                "grpc_server": {
                    "host": hosts["codeserver"].address,
                    "port": grpc_port,
                    "location_name": LOCATION_NAME,
                }
            }
        ]
    }
    for name in ("daemon", "webserver"):
        (folders[name] / "workspace.yaml").write_text(yaml.safe_dump(workspace))

    network_env = {  # what every host needs to reach the network's services
        **postgres.env(database),
        "AWS_ENDPOINT_URL": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "DAGSTER_COMPUTE_LOG_BUCKET": log_bucket,
    }
    code_folder = folders["codeserver"]
    code_env = {
        **base_env(code_folder),
        **network_env,
        "DOCDB_URI": mongo.uri,
        "DOCDB_DATABASE": docdb_database,
        "ANALYSIS_BUCKET": f"{bucket}/results",
        "DISPATCH_INBOX": f"s3://{bucket}/inbox",
        "DRY_RUN": "0",
        "GIT_COMMIT": GIT_SHA,
        "ANALYSIS_MODULES": "analysis_wrapper_tests.counting_analysis",
        "COUNTING_LOG": str(code_folder / "computations.log"),  # the code server's own file
        "SENSOR_INTERVAL_S": "2",
        "SENSOR_AUDIT_AFTER_S": "2",
        "RETRY_DELAY_S": "1",
        "LEASE_TTL_S": "6",
        "SENSOR_BATCH_SIZE": str(BATCH_SIZE),
    }
    envs = {
        "codeserver": code_env,
        "daemon": {**base_env(folders["daemon"]), **network_env},
        "webserver": {**base_env(folders["webserver"]), **network_env},
    }
    commands = {
        "codeserver": [
            str(BIN / "dagster"),
            "api",
            "grpc",
            "-m",
            "analysis_wrapper.definitions",
            "-h",
            hosts["codeserver"].address,
            "-p",
            str(grpc_port),
        ],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
        "webserver": [
            str(BIN / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            hosts["webserver"].address,
            "-p",
            str(web_port),
        ],
    }
    for name in HOST_NAMES:
        (folders[name] / "environment.json").write_text(json.dumps(envs[name], indent=1))  # its config
        cluster.processes[name] = host_process(
            hosts[name], commands[name], folders[name], envs[name], logs / f"{name}.log"
        )

    # ---- inputs and job files (written by the "dispatcher": this test, in its own folder) -----------
    client = s3.client()
    inputs = []
    for i in range(N_INPUTS):
        key = f"inputs/input-{i}.bin"
        client.put_object(Bucket=bucket, Key=key, Body=os.urandom(100 + 37 * i))
        inputs.append(f"s3://{bucket}/{key}")
    dispatcher = root / "dispatcher"
    # Every job has its own sleep_s (so its own fingerprint); a few sleep long, so that the kill can be
    # timed to land while one of them computes.
    slow = {i for i in range(N_JOBS) if i % 40 == 7}
    files = [
        write_job(
            dispatcher,
            [inputs[i % N_INPUTS]],
            analysis=counting.name,
            sleep_s=round((SLOW_SLEEP_S if i in slow else FAST_SLEEP_S) + i * 1e-4, 4),
        )
        for i in range(N_JOBS)
    ]
    prepared = prepare_files(files, {counting.name: counting})
    assert not prepared.rejected
    expected = {job.partition_key: job.fingerprint for job in prepared.all_jobs()}
    assert len(set(expected.values())) == N_JOBS and len(expected) == N_JOBS
    slow_keys = {j.partition_key for j in prepared.all_jobs() if j.parameters["sleep_s"] >= SLOW_SLEEP_S}
    assert len(slow_keys) == len(slow)

    store = MongoStore(mongo.uri, database=docdb_database)

    def records() -> set[str]:
        return store.existing_fingerprints(counting.name, list(expected.values()))

    def jobs() -> dict[str, Any]:
        return {e.partition_key: e for e in store.list_jobs(counting.name)}

    # ---- start the hosts: the code server first (the others connect to it) -----------------------------
    code = cluster.processes["codeserver"]
    code.start()
    cluster.wait_for(
        "code server answers gRPC on its address",
        lambda: grpc_ping(hosts["codeserver"].address, grpc_port),
        START_TIMEOUT_S,
    )
    cluster.processes["daemon"].start()
    cluster.processes["webserver"].start()
    web_url = f"http://{hosts['webserver'].address}:{web_port}"
    cluster.wait_for(
        "webserver answers", lambda: http_get(f"{web_url}/server_info") is not None, START_TIMEOUT_S
    )

    def daemon_running() -> bool:
        rows = postgres.query(database, "SELECT daemon_type FROM daemon_heartbeats")
        return {"SENSOR", "QUEUED_RUN_COORDINATOR"} <= {name for (name,) in rows}

    cluster.wait_for("daemon heartbeats in PostgreSQL", daemon_running, START_TIMEOUT_S)
    version = graphql(web_url, "{ version }")["version"]
    locations = graphql(
        web_url,
        "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus "
        "locationOrLoadError { __typename } } } } }",
    )["workspaceOrError"]["locationEntries"]
    assert [(e["name"], e["locationOrLoadError"]["__typename"]) for e in locations] == [
        (LOCATION_NAME, "RepositoryLocation")
    ], locations
    print(f"webserver: dagster {version}, location {LOCATION_NAME} loaded from the code server", flush=True)

    # ---- drop the jobs (into <inbox>/counting/: see the module docstring) -------------------------------
    def drop(path: Path) -> None:
        client.upload_file(str(path), bucket, f"inbox/{counting.name}/{path.name}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(drop, files))
    cluster.mark(f"{N_JOBS} job files dropped into s3://{bucket}/inbox/{counting.name}/")

    # The test's own polling is kept light: SecantusDB (a Python server) is the busiest process here.
    def mid_run() -> bool:
        running = store.find_jobs(counting.name, states=[JobState.RUNNING], limit=10)
        return any(e.partition_key in slow_keys for e in running) and len(records()) >= DONE_BEFORE_KILL

    cluster.wait_for(
        f"{DONE_BEFORE_KILL} jobs recorded and a slow one running", mid_run, FINISH_TIMEOUT_S, 0.2
    )

    # ---- SIGKILL the code server and its run workers, then start it again -------------------------------
    code.kill(require_group_gone=True)
    cluster.mark("code server killed (SIGKILL to its process group)")
    at_kill = jobs()
    interrupted = {k for k, e in at_kill.items() if e.state == JobState.RUNNING}
    recorded_at_kill = records()
    in_progress = postgres.query(
        database, "SELECT run_id, status FROM runs WHERE status IN ('STARTING', 'STARTED')"
    )
    started_at_kill = {run_id for run_id, status in in_progress if status == "STARTED"}
    starting_at_kill = {run_id for run_id, status in in_progress if status == "STARTING"}
    assert interrupted, "the kill was meant to land while a job was running"
    assert started_at_kill, "the kill was meant to land while a run was in progress"
    assert len(recorded_at_kill) < N_JOBS
    print(
        f"at the kill: {len(recorded_at_kill)} recorded, {len(interrupted)} running, "
        f"{len(started_at_kill)} runs started and {len(starting_at_kill)} starting",
        flush=True,
    )
    time.sleep(2)
    code.start()
    cluster.wait_for(
        "code server answers again",
        lambda: grpc_ping(hosts["codeserver"].address, grpc_port),
        START_TIMEOUT_S,
    )

    def all_done() -> bool:
        if len(records()) < N_JOBS:
            return False
        entries = jobs()
        return len(entries) == N_JOBS and all(e.state == JobState.DONE for e in entries.values())

    def unfinished() -> str:
        """The jobs not done, the leases of their runs and Dagster's unfinished runs (for a timeout)."""
        entries = [e for e in jobs().values() if e.state != JobState.DONE]
        run_ids = {e.run_id for e in entries if e.run_id}
        rows = postgres.query(
            database,
            "SELECT run_id, status, create_timestamp, update_timestamp FROM runs "
            "WHERE status NOT IN ('SUCCESS', 'FAILURE', 'CANCELED') ORDER BY create_timestamp",
        )
        run_ids |= {str(row[0]) for row in rows}
        leases = store.get_leases(run_lease_key(run_id) for run_id in sorted(run_ids))
        lines = [f"{len(records())} of {N_JOBS} recorded; {len(entries)} jobs not done:"]
        lines += [
            f"  {e.partition_key}: {e.state.value} run {e.run_id} attempts {e.attempts} "
            f"updated {e.updated_at:%H:%M:%S}"
            for e in entries[:20]
        ]
        lines.append(f"unfinished Dagster runs: {rows}")
        lines.append(f"their leases: {leases}")
        return "\n".join(lines)

    cluster.wait_for(
        f"all {N_JOBS} jobs recorded and done", all_done, FINISH_TIMEOUT_S, 2.0, explain=unfinished
    )

    def summary_current() -> bool:
        """The summary (updated by automation after new results) holds every job, and no run is left:
        the system is quiet, with nothing more to request."""
        (unfinished,) = postgres.query(
            database, "SELECT count(*) FROM runs WHERE status NOT IN ('SUCCESS', 'FAILURE', 'CANCELED')"
        )
        if unfinished[0]:
            return False
        try:
            body = client.get_object(Bucket=bucket, Key=f"results/{counting.name}_summary/summary.csv")[
                "Body"
            ]
        except client.exceptions.NoSuchKey:
            return False
        rows = list(csv.DictReader(io.StringIO(body.read().decode())))
        return sorted(row["fingerprint"] for row in rows) == sorted(expected.values())

    def summary_behind() -> str:
        """For a timeout: Dagster's unfinished runs, and how many jobs the summary holds."""
        rows = postgres.query(
            database,
            "SELECT run_id, pipeline_name, status FROM runs "
            "WHERE status NOT IN ('SUCCESS', 'FAILURE', 'CANCELED')",
        )
        try:
            body = client.get_object(Bucket=bucket, Key=f"results/{counting.name}_summary/summary.csv")[
                "Body"
            ]
            held = len(list(csv.DictReader(io.StringIO(body.read().decode()))))
        except client.exceptions.NoSuchKey:
            held = 0
        return f"unfinished runs: {rows}; the summary holds {held} of {len(expected)} jobs"

    # A summary that stopped one job short here (199 of 200, nothing left to run) was the automation
    # condition dropping a result recorded in the tick of the summary's request or update; see
    # test_summary.py::test_a_result_recorded_while_the_summary_runs_is_not_lost. A timeout says what is
    # missing.
    cluster.wait_for(
        "the summary holds every job and every Dagster run ended",
        summary_current,
        240,
        2.0,
        explain=summary_behind,
    )

    def web_shows_every_run() -> bool:
        """The webserver (its own host) shows the runs and statuses PostgreSQL holds. Compared back to
        back and retried: the summary's automation may still request a run after the last record."""
        web = graphql(web_url, "{ runsOrError { ... on Runs { results { runId status } } } }")
        seen = sorted((r["runId"], r["status"]) for r in web["runsOrError"]["results"])
        held = sorted(
            (str(run_id), status)
            for run_id, status in postgres.query(database, "SELECT run_id, status FROM runs")
        )
        return bool(seen) and seen == held

    cluster.wait_for("the webserver shows every run PostgreSQL holds", web_shows_every_run, 60, 1.0)

    # ---- stop everything, then look ---------------------------------------------------------------------
    cluster.stop_hosts()
    cluster.mark("hosts stopped")
    check_outcome(
        cluster,
        postgres=postgres,
        database=database,
        s3=s3,
        bucket=bucket,
        log_bucket=log_bucket,
        mongo=mongo,
        docdb_database=docdb_database,
        store=store,
        expected=expected,
        files=files,
        interrupted=interrupted,
        started_at_kill=started_at_kill,
        starting_at_kill=starting_at_kill,
    )
    store.close()
    print(f"timings (s from the start): {cluster.timings}", flush=True)


def check_outcome(
    cluster: Cluster,
    *,
    postgres: pg.PostgresServer,
    database: str,
    s3: S3Endpoint,
    bucket: str,
    log_bucket: str,
    mongo: MongoServer,
    docdb_database: str,
    store: MongoStore,
    expected: dict[str, str],
    files: list[Path],
    interrupted: set[str],
    started_at_kill: set[str],
    starting_at_kill: set[str],
) -> None:
    client = s3.client()
    fingerprints = set(expected.values())

    # Records: one per fingerprint, none superseded, each pointing at a complete folder of its own run.
    records = store.find_records(counting.name)
    assert sorted(r["_id"] for r in records) == sorted(fingerprints)
    assert len(store.find_records(counting.name, include_superseded=True)) == len(fingerprints)
    db = mongo.client()[docdb_database]
    raw_records = list(db[counting.name].find())
    assert len(raw_records) == len(fingerprints)
    objects = s3.objects(bucket, "results/")
    folders: dict[str, set[str]] = defaultdict(set)
    for key in objects:
        fp_folder, _, name = key.removeprefix("results/").partition("/")
        if fp_folder != f"{counting.name}_summary":  # the summary asset's folder, written by automation
            folders[fp_folder].add(name)
    assert set(folders) == fingerprints, sorted(set(folders) ^ fingerprints)[:5]
    wanted_files = {*RESULT_FILES, "outputs.json", "metadata.nd.json"}
    computations: dict[str, list[str]] = defaultdict(list)
    for fingerprint, _pid, token in read_log(cluster.folders["codeserver"] / "computations.log"):
        computations[fingerprint].append(token)
    for record in records:
        fp = record["_id"]
        assert record["location"] == f"s3://{bucket}/results/{fp}", record["location"]
        assert folders[fp] == wanted_files, (fp, folders[fp])
        written = json.loads(
            client.get_object(Bucket=bucket, Key=f"results/{fp}/metadata.nd.json")["Body"].read()
        )
        wrapper = record["analysis_wrapper"]
        assert written["analysis_wrapper"]["run_id"] == wrapper["run_id"]
        assert written["_id"] == fp
        token = (
            client.get_object(Bucket=bucket, Key=f"results/{fp}/{TOKEN_FILE}")["Body"].read().decode().strip()
        )
        process = record["processing"]["data_processes"][0]
        assert process["output_parameters"]["token"] == token
        assert token in computations[fp], "the record is of a computation the code server made"
        assert wrapper["job_source"].startswith(f"s3://{bucket}/inbox/registered/{counting.name}/"), wrapper
        assert all(d["url"].startswith(f"s3://{bucket}/inputs/") for d in process["code"]["input_data"])
        assert (wrapper["git_commit"], wrapper["git_dirty"], wrapper["code_state_source"]) == (
            GIT_SHA,
            False,
            "GIT_COMMIT",
        )
        assert not wrapper["dry_run"]
    # Each computation was recorded, or was one the kill interrupted (then computed again).
    assert set(computations) == fingerprints
    computed_again = {fp for fp, tokens in computations.items() if len(tokens) > 1}
    assert computed_again <= {expected[k] for k in interrupted}, (computed_again, interrupted)

    # The registry: every job done once, the interrupted ones on a later attempt.
    entries = {e.partition_key: e for e in store.list_jobs(counting.name)}
    assert {k: e.fingerprint for k, e in entries.items()} == expected
    assert all(e.state == JobState.DONE for e in entries.values())
    assert all(e.source.startswith(f"s3://{bucket}/inbox/registered/") for e in entries.values())
    for key in interrupted:
        if expected[key] in computed_again:
            assert entries[key].attempts >= 2, entries[key]

    # The inbox: every file registered, none left, none rejected.
    inbox = s3.objects(bucket, "inbox/")
    registered = {k.rsplit("/", 1)[1] for k in inbox if k.startswith(f"inbox/registered/{counting.name}/")}
    assert registered == {p.name for p in files}
    left = sorted(set(inbox) - {f"inbox/registered/{counting.name}/{name}" for name in registered})
    assert not left, left[:5]

    # Dagster (PostgreSQL): no partition succeeded twice; the runs the kill interrupted ended FAILURE
    # (found lost); the webserver shows the same runs.
    from dagster import DagsterInstance, DagsterRunStatus

    observer_home = cluster.root / "observer_home"
    observer_home.mkdir()
    shutil.copy(DEPLOY_INSTANCE_YAML, observer_home / "dagster.yaml")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in postgres.env(database).items():
            mp.setenv(name, value)
        with DagsterInstance.from_config(str(observer_home)) as instance:
            runs = instance.get_runs()
    assert runs and {r.status for r in runs} <= {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE}
    assert any(r.job_name == counting.batch_job_name for r in runs), "no batch run: batching untested"
    successes: Counter[str] = Counter(
        key for r in runs if r.status == DagsterRunStatus.SUCCESS for key in run_partition_keys(r)
    )
    assert set(successes) <= set(expected) and set(successes.values()) <= {1}, successes.most_common(3)
    by_id = {r.run_id: r for r in runs}
    for run_id in started_at_kill | starting_at_kill:
        assert by_id[run_id].status == DagsterRunStatus.FAILURE, by_id[run_id]
    lost_keys = {
        key for run_id in started_at_kill | starting_at_kill for key in run_partition_keys(by_id[run_id])
    }
    assert set(expected) - set(successes) <= lost_keys
    # A run whose worker was killed is failed by the inbox sensor's recovery (its heartbeat is gone); one
    # the daemon was launching at the kill (STARTING) is failed by the daemon's queue itself.
    for run_id in started_at_kill:
        (failure,) = postgres.query(
            database,
            "SELECT event FROM event_logs WHERE run_id = %s AND dagster_event_type = 'PIPELINE_FAILURE'",
            run_id,
        )
        assert "is lost" in failure[0], failure[0][:500]
    # ...and no run that was alive was taken for lost (its heartbeat lease kept being renewed).
    lost_runs = {
        run_id
        for run_id, event in postgres.query(
            database, "SELECT run_id, event FROM event_logs WHERE dagster_event_type = 'PIPELINE_FAILURE'"
        )
        if "is lost" in event
    }
    assert lost_runs == started_at_kill, f"live runs taken for lost: {sorted(lost_runs - started_at_kill)}"
    print(
        f"runs: {len(runs)} ({Counter(r.status.value for r in runs)}); killed runs: {len(started_at_kill)} "
        f"(+{len(starting_at_kill)} being launched); "
        f"jobs interrupted: {len(interrupted)}, computed again: {len(computed_again)}",
        flush=True,
    )

    # No host's local path anywhere but in its own config: not in another host's config, not in the
    # records, the registry, the leases, the results or the inbox.
    host_paths = {name: str(folder) for name, folder in cluster.folders.items()}
    for name, folder in cluster.folders.items():
        config = "\n".join(
            p.read_text()
            for p in (
                folder / "environment.json",
                folder / "workspace.yaml",
                folder / "dagster_home" / "dagster.yaml",
            )
            if p.exists()
        )
        for other, path in host_paths.items():
            if other != name:
                assert path not in config, f"{other}'s folder {path} is in {name}'s config"
    shared_text = {
        "records": json.dumps(raw_records, default=str),
        "registry": json.dumps(list(db["analysis_wrapper_jobs"].find()), default=str),
        "leases": json.dumps(list(db["analysis_wrapper_leases"].find()), default=str),
    }
    with ThreadPoolExecutor(8) as pool:
        bodies = pool.map(
            lambda key: (key, client.get_object(Bucket=bucket, Key=key)["Body"].read()),
            [k for k in s3.objects(bucket) if not k.startswith("inputs/")],
        )
        for key, body in bodies:
            shared_text[f"s3://{bucket}/{key}"] = body.decode(errors="replace")
    local_roots = {**host_paths, "the test's own folder": str(cluster.root)}
    for where, text in shared_text.items():
        for name, path in local_roots.items():
            assert path not in text, f"{name}'s local path {path} is in {where}"

    # Nothing of the code server's runs or sensor ticks went into another host's folder: the captured
    # output is in S3 (COMPUTE_LOGS_IN_S3), and no DAGSTER_HOME but the own one is used by anyone.
    for name in ("daemon", "webserver"):
        home = cluster.folders[name] / "dagster_home"
        strays = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
        assert strays == ["dagster.yaml"], (
            f"{name}'s DAGSTER_HOME holds files it did not write: {strays[:10]}"
        )
    assert any(k.startswith("compute-logs/") for k in s3.objects(log_bucket)), "no captured output in S3"
    # Dagster's storage (PostgreSQL) holds, in each run's code origin, the working directory the code
    # server loads its code from (its own folder: only it and its run workers use it). Say what it
    # holds, without requiring anything of it.
    dagster_text = "\n".join(
        str(row)
        for table, column in (("runs", "run_body"), ("run_tags", "value"), ("event_logs", "event"))
        for row in postgres.query(database, f"SELECT {column} FROM {table}")
    )
    for name, path in host_paths.items():
        at = dagster_text.find(path)
        print(
            f"PostgreSQL mentions {name}'s folder {dagster_text.count(path)} time(s)"
            + (f", e.g. ...{dagster_text[max(at - 160, 0) : at + len(path) + 2]}" if at >= 0 else ""),
            flush=True,
        )
    for name, folder in cluster.folders.items():
        held = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        print(f"{name}'s folder holds {len(held)} file(s): {held[:12]}", flush=True)
