"""Secrets: a full S3 + MongoDB run with recognisable secret values, then every output searched for them.

The S3 server is SeaweedFS started with a recognisable access key and secret key (it checks the request
signatures, so the keys are really used). The store is SecantusDB started with ``--auth`` (SCRAM-SHA-256)
after a user with a recognisable password was created: ``DOCDB_URI`` carries the user and the password
(with characters that must be URL-encoded), and the server refuses clients without them.

Then, with those values in the environment: ``submit``, ``run`` (a batch and one run per job; a job whose
S3 input is missing fails), ``status`` (table, ``--json``, ``--full``), ``results`` (table, ``--json
--files``, ``--full``), ``retry`` (all failed, and an unknown key), the failure paths (a bad setting, the
database unreachable with the password in its URI), an inbox sensor tick in a process of its own, and
``dagster asset materialize`` of a partition the tick registered. Every output is searched for every
secret, raw and URL-encoded: the terminal (stdout and stderr of every command), every file under
``DAGSTER_HOME`` (Dagster's SQLite databases, compute logs, the record store), the result and dry-run
folders, the inbox, every S3 object of the bucket, and every document of the database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper_tests.counting_analysis import NAME
from analysis_wrapper_tests.environment import scrubbed_environ
from analysis_wrapper_tests.faults import report
from analysis_wrapper_tests.faults.scripts import TICK, WORKER
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.mongo_server import MongoServerFactory, fresh_database_name
from analysis_wrapper_tests.s3_servers import start_weed

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ACCESS_KEY = "AKIALEAKCHECK7Q3X9ZW1"
SECRET_KEY = "sEcReT/LeakCheck+Zq81-wPk"
DB_USER = "aw_leak_user"
DB_PASSWORD = "Pw-Leak/Check:9@x%z"
SECRETS = (ACCESS_KEY, SECRET_KEY, DB_PASSWORD)
TIMEOUT_S = 240.0


def needles() -> list[bytes]:
    """Every secret, raw and in the URL-encoded forms a URI or a log line may hold."""
    found: set[bytes] = set()
    for secret in SECRETS:
        for form in (secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)):
            found.add(form.encode())
    return sorted(found)


def leaks_in(data: bytes) -> list[str]:
    return [n.decode() for n in needles() if n in data]


def authenticated_mongo(factory: MongoServerFactory) -> tuple[Any, str]:
    """A SecantusDB that requires a user and password, and the DOCDB_URI holding them."""
    server = factory()
    admin = server.client(directConnection=True)
    admin.admin.command("createUser", DB_USER, pwd=DB_PASSWORD, roles=["root"])
    admin.close()
    server.stop()
    server.flags = (*server.flags, "--auth")
    server.start()
    quoted = urllib.parse.quote(DB_PASSWORD, safe="")
    uri = f"mongodb://{DB_USER}:{quoted}@{server.host}:{server.port}/?directConnection=true&authSource=admin"
    import pymongo

    anonymous = pymongo.MongoClient(server.direct_uri, serverSelectionTimeoutMS=3000)
    try:
        with pytest.raises(pymongo.errors.OperationFailure):
            anonymous["analysis"]["x"].find_one()
    finally:
        anonymous.close()
    return server, uri


def test_no_secret_in_any_output_of_a_full_s3_and_mongodb_run(
    tmp_path: Path, clean_repo: Path, mongo_server_factory: MongoServerFactory
) -> None:
    import boto3

    servers = tmp_path / "servers"  # the servers' own files (their config holds the keys): not searched
    weed = start_weed(servers / "seaweed", access_key=ACCESS_KEY, secret_key=SECRET_KEY)
    endpoint = weed.endpoint
    try:
        mongo, uri = authenticated_mongo(mongo_server_factory)
        database = fresh_database_name("secrets")
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )
        wrong = boto3.client(
            "s3",
            endpoint_url=endpoint.endpoint_url,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key="not-the-secret",
            region_name="us-east-1",
        )
        with pytest.raises(Exception, match="SignatureDoesNotMatch"):
            wrong.list_buckets()  # the keys are really checked
        bucket = "leak-check"
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="inputs/one.txt", Body=b"one\n")
        s3.put_object(Bucket=bucket, Key="inputs/two.txt", Body=b"two two\n")
        work = tmp_path / "work"
        jobs, inbox = work / "jobs", work / "inbox"
        write_job(jobs, [f"s3://{bucket}/inputs/one.txt"], analysis=NAME, sleep_s=0.0)
        write_job(jobs, [f"s3://{bucket}/inputs/two.txt"], analysis=NAME, sleep_s=0.0)
        write_job(jobs, [f"s3://{bucket}/inputs/missing.txt"], analysis=NAME, sleep_s=0.0)  # fails
        inbox.mkdir(parents=True)
        (work / "tmp").mkdir()
        home = work / "home"
        env = scrubbed_environ()
        env.update(
            DAGSTER_HOME=str(home),
            RESULTS_ROOT=str(work / "results"),
            DRY_RUN_ROOT=str(work / "dry_run"),
            DRY_RUN="0",
            CODE_REPOSITORY=str(clean_repo),
            ANALYSIS_MODULES="analysis_wrapper_tests.counting_analysis",
            ANALYSIS_BUCKET=f"{bucket}/results",
            AWS_ENDPOINT_URL=endpoint.endpoint_url,
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION="us-east-1",
            AWS_CONFIG_FILE=str(work / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(work / "no-aws-credentials"),
            AWS_EC2_METADATA_DISABLED="true",
            DOCDB_URI=uri,
            DOCDB_DATABASE=database,
            DOCDB_TIMEOUT_MS="3000",
            S3_MAX_ATTEMPTS="1",
            DISPATCH_INBOX=str(inbox),
            INBOX_SETTLE_S="0",
            TMPDIR=str(work / "tmp"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        )
        unreachable = uri.replace(f":{mongo.port}/", ":9/")  # nothing listens on port 9
        steps: list[tuple[list[str], dict[str, str], set[int]]] = [
            (["submit", str(jobs)], {}, {0}),
            (["run"], {}, {1}),  # a batch: two done, the missing input failed
            (["run", "--batch-size", "1", str(jobs)], {}, {1}),
            (["--verbose", "run", "--batch-size", "1", str(jobs)], {}, {1}),
            (["status"], {}, {0}),
            (["status", "--json"], {}, {0}),
            (["status", "--full"], {}, {0}),
            (["results"], {}, {0}),
            (["results", "--full"], {}, {0}),
            (["results", "--json", "--files"], {}, {0}),
            (["retry"], {}, {0}),
            (["retry", "no-such-key"], {}, {1}),
            (["status"], {"DRY_RUN": "maybe"}, {2}),
            (["status"], {"DOCDB_URI": unreachable, "DOCDB_TIMEOUT_MS": "500"}, {2}),
            (["--verbose", "status"], {"DOCDB_URI": unreachable, "DOCDB_TIMEOUT_MS": "500"}, {2}),
        ]
        plan = []
        for number, (args, extra, _codes) in enumerate(steps):
            step = work / "terminal" / f"{number:02d}"
            step.parent.mkdir(parents=True, exist_ok=True)
            plan.append(
                {
                    "gate": str(work / "terminal" / "go"),
                    "env": {**env, **extra},
                    "args": args,
                    "out": f"{step}.out",
                    "err": f"{step}.err",
                    "code": f"{step}.code",
                }
            )
        (work / "terminal" / "go").touch()
        plan_file = work / "plan.json"
        plan_file.write_text(json.dumps(plan))
        worker = subprocess.run(
            [sys.executable, "-c", WORKER, str(plan_file), "0"],
            env=env,
            cwd=work,
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        (work / "terminal" / "worker.out").write_bytes(worker.stdout + worker.stderr)
        assert worker.returncode == 0, worker.stderr[-3000:]
        for number, (args, _extra, codes) in enumerate(steps):
            code = int((work / "terminal" / f"{number:02d}.code").read_text())
            out = (work / "terminal" / f"{number:02d}.out").read_text(errors="replace")
            err = (work / "terminal" / f"{number:02d}.err").read_text(errors="replace")
            assert code in codes, f"{args}: exit {code}\n{out[-2000:]}\n{err[-2000:]}"
        summary = (work / "terminal" / "01.out").read_text()
        assert "2 done" in summary and "1 failed" in summary, summary
        # The S3 failure is one line with its cause and its log; no stack trace on the terminal.
        (failed,) = [line for line in summary.splitlines() if line.startswith("failed")]
        assert "missing.txt" in failed and "full log: Dagster run" in failed, failed
        for number in ("01", "02"):
            err = (work / "terminal" / f"{number}.err").read_text()
            assert "Traceback" not in err and "Stack Trace" not in err, err
        unreachable_err = (work / "terminal" / "13.err").read_text()
        assert unreachable_err.startswith("error: ") and len(unreachable_err.splitlines()) == 1, (
            unreachable_err
        )

        # The inbox sensor's tick in a process of its own registers a new job from the inbox ...
        new_job = write_job(work / "new", [f"s3://{bucket}/inputs/two.txt"], analysis=NAME, sleep_s=0.01)
        (inbox / new_job.name).write_bytes(new_job.read_bytes())
        tick = subprocess.run(
            [sys.executable, "-c", TICK, f"{NAME}_inbox_sensor"],
            env=env,
            cwd=work,
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        (work / "terminal" / "tick.out").write_bytes(tick.stdout + tick.stderr)
        assert tick.returncode == 0, tick.stderr[-3000:]
        # ... and `dagster asset materialize` runs it (the partition the tick registered).
        import pymongo

        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            entries = list(
                client[database]["analysis_wrapper_jobs"].find({"job.analysis_code.parameters.sleep_s": 0.01})
            )
            assert len(entries) == 1, entries
            key = entries[0]["partition_key"]
        finally:
            client.close()
        from dagster import DagsterInstance

        instance = DagsterInstance.from_config(str(home))
        try:
            instance.add_dynamic_partitions(f"{NAME}_partitions", [key])  # as the daemon applies the tick
        finally:
            instance.dispose()
        materialize = subprocess.run(
            [
                str(BIN / "dagster"),
                *("asset", "materialize", "-m", "analysis_wrapper.definitions"),
                *("--select", f"{NAME}_result", "--partition", key),
            ],
            env=env,
            cwd=work,
            capture_output=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        (work / "terminal" / "materialize.out").write_bytes(materialize.stdout + materialize.stderr)
        assert materialize.returncode == 0, materialize.stderr[-3000:]

        # Search everything. The plan (the environment given to the commands) holds every secret: the
        # search must find them there, or it finds nothing anywhere.
        assert len(leaks_in(plan_file.read_bytes())) >= len(SECRETS), "the search cannot see the secrets"
        searched = 0
        leaked: list[str] = []
        for path in sorted(work.rglob("*")):
            if path.is_file() and path != plan_file:  # the plan holds the environment we gave
                searched += 1
                leaked += [f"{path}: {n}" for n in leaks_in(path.read_bytes())]
        objects = [
            obj["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for obj in page.get("Contents", [])
        ]
        assert any(k.startswith("results/") for k in objects), objects
        for key_name in objects:
            searched += 1
            body = s3.get_object(Bucket=bucket, Key=key_name)["Body"].read()
            leaked += [f"s3://{bucket}/{key_name}: {n}" for n in leaks_in(body)]
        from bson import json_util

        client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            db = client[database]
            collections = db.list_collection_names()
            assert NAME in collections and "analysis_wrapper_jobs" in collections, collections
            records = 0
            for name in collections:
                for document in db[name].find():
                    searched += 1
                    records += name == NAME
                    text = json_util.dumps(document).encode()
                    leaked += [f"{database}.{name} {document['_id']}: {n}" for n in leaks_in(text)]
            assert records >= 3, records  # two jobs from the CLI, one from dagster asset materialize
        finally:
            client.close()
        report.record("secrets", searched=searched, leaked=len(leaked))
        print(f"secrets: {searched} files, objects and documents searched, {len(leaked)} leaks")
        assert not leaked, "\n".join(leaked)
        assert searched > 50
    finally:
        weed.stop()
