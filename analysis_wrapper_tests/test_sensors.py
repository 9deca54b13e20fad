"""The inbox sensors and the run events sensor, tick by tick with ``build_sensor_context``.

Runs the sensors request are executed in-process where a test needs their outcome (as the daemon
would launch them); partition requests of a tick are applied to the instance as the daemon does.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import socket
import sqlite3
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterRunStatus, SensorResult
from dagster._core.storage.tags import GRPC_INFO_TAG, PARTITION_NAME_TAG
from dagster._core.test_utils import create_run_for_test

from analysis_wrapper.cli import main as cli_main
from analysis_wrapper.inbox import REASON_SUFFIX, Inbox, LocalInbox
from analysis_wrapper.ownership import end_heartbeat, heartbeat
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper.sensors import (
    RUN_CANCELS_SENSOR_NAME,
    RUN_FAILURES_SENSOR_NAME,
    InboxCursor,
)
from analysis_wrapper.sensors import inbox_sensor as sensors_module
from analysis_wrapper.sensors.intake import Intake
from analysis_wrapper.store.base import JobEntry, JobState
from analysis_wrapper.tags import ANALYSIS_TAG, ATTEMPT_TAG, BATCH_SIZE_TAG, FINGERPRINT_TAG
from analysis_wrapper_tests.harness import make_settings
from analysis_wrapper_tests.job_states import register_entries, set_state
from analysis_wrapper_tests.s3_servers import S3Endpoint
from analysis_wrapper_tests.sample_analyses import echo
from analysis_wrapper_tests.sensor_ticks import SUMMARIES, Env


@pytest.fixture
def env_factory(tmp_path: Path, clean_repo: Path) -> Iterator[Any]:
    made: list[Env] = []

    def factory(**kwargs: Any) -> Env:
        env = Env(tmp_path, clean_repo, **kwargs)
        made.append(env)
        return env

    yield factory
    close_all_stores()


@pytest.fixture(autouse=True)
def capture_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep each tick's summary line: a tick that requests runs logs it instead of a skip reason."""
    real = sensors_module.Tick.summary

    def summary(self: Any) -> str:
        text = real(self)
        SUMMARIES.append(text)
        return text

    monkeypatch.setattr(sensors_module.Tick, "summary", summary)


def message(result: SensorResult) -> str:
    return (result.skip_reason.skip_message or "") if result.skip_reason else ""


def result_log(env: Env, result: SensorResult) -> str:
    """The tick's summary line: its skip reason, or (when it requested runs) what it logged."""
    return message(result) or env.last_summary


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def make_old(path: Path, seconds: float = 3600) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


# ---- new files ----------------------------------------------------------------------------------
def test_new_files_become_partitions_and_run_requests(env_factory: Any) -> None:
    env = env_factory()
    dropped = [env.drop(scale=float(i + 1)) for i in range(3)]
    result = env.tick()
    assert len(result.run_requests) == 3
    entries = env.store.list_jobs("echo")
    assert len(entries) == 3 and {e.state for e in entries} == {JobState.PENDING}
    by_key = {e.partition_key: e for e in entries}
    assert sorted(env.instance.get_dynamic_partitions(echo.partitions_name)) == sorted(by_key)
    for request in result.run_requests:
        entry = by_key[request.partition_key]
        assert request.run_key == f"{entry.fingerprint}:1"
        assert request.tags[ANALYSIS_TAG] == "echo" and request.tags[FINGERPRINT_TAG] == entry.fingerprint
        assert request.tags[ATTEMPT_TAG] == "1"
        assert not request.run_config  # the asset loads its job from the registry by partition key
    # Files leave the drop area: registered/<analysis>/, recorded as the job's source.
    assert [p for p in dropped if p.exists()] == []
    registered = env.root / "registered" / "echo"
    assert files_in(registered) == sorted(p.name for p in dropped)
    assert {Path(e.source).parent for e in entries} == {registered}

    # The next tick: the runs exist in Dagster now, so their jobs are queued; nothing new to request.
    second = env.tick()
    assert second.run_requests == [] and "0 new file(s)" in message(second)
    assert set(env.states().values()) == {"queued"}

    for request in result.run_requests:
        assert env.execute(request).success
    assert set(env.states().values()) == {"done"}
    assert len(env.store.find_records("echo")) == 3
    assert env.tick().run_requests == []


def test_recorded_fingerprints_are_not_requested(env_factory: Any) -> None:
    env = env_factory()
    first = env.drop(scale=2.0)
    job_text = first.read_text()
    (request,) = env.tick().run_requests
    assert env.execute(request).success
    # The same job again (another file name), the same job under another asset name (same
    # fingerprint, other partition key), and one new job.
    (env.root / f"{uuid.uuid4()}.json").write_text(job_text)
    relabelled = json.loads(job_text)
    relabelled["asset_name"] = ["another-label"]
    (env.root / f"{uuid.uuid4()}.json").write_text(json.dumps(relabelled))
    env.drop(scale=3.0)
    result = env.tick()
    assert len(result.run_requests) == 1
    assert "3 new file(s), 0 rejected, 2 already done, 1 registered, 1 requested" in result_log(env, result)
    states = env.states()
    assert sorted(states.values()) == ["done", "pending", "skipped"]
    skipped = next(k for k, s in states.items() if s == "skipped")
    assert skipped.startswith("another-label-")
    assert files_in(env.root / "rejected") == []


# ---- bad files ----------------------------------------------------------------------------------
def test_broken_files_are_quarantined_with_their_reason_and_good_ones_go_on(env_factory: Any) -> None:
    env = env_factory()
    good = [env.drop(scale=float(i + 1)) for i in range(2)]
    job = json.loads(good[0].read_text())
    bad: dict[str, str | bytes] = {
        "broken.json": '{\n  "s3_location": ["x"],\n  "asset_name": [oops]\n}\n',
        "missing.json": json.dumps({k: v for k, v in job.items() if k != "s3_location"}),
        "negative.json": json.dumps(
            {**job, "analysis_code": {"parameters": {"analysis_name": "echo", "scale": -1}}}
        ),
        "unknown.json": json.dumps({**job, "analysis_code": {"parameters": {"analysis_name": "nope"}}}),
        "not-utf8.json": b'{"s3_location": ["\xff"]}',
    }
    for name, text in bad.items():
        path = env.root / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        make_old(path)
    young = env.root / "young.json"
    young.write_text('{"s3_location": ["half-writ')  # still being written: left for a later tick

    result = env.tick()
    assert len(result.run_requests) == 2
    summary = result_log(env, result)
    assert "7 new file(s), 5 rejected, 0 already done, 2 registered, 2 requested" in summary
    assert "1 deferred" in summary
    rejected = env.root / "rejected"
    assert files_in(rejected) == sorted([*bad, *(name + REASON_SUFFIX for name in bad)])
    reasons = {name: (rejected / (name + REASON_SUFFIX)).read_text() for name in bad}
    assert "line 3" in reasons["broken.json"] and "invalid JSON" in reasons["broken.json"]
    assert "field 's3_location': Field required" in reasons["missing.json"]
    assert "parameters.scale" in reasons["negative.json"] and "greater than 0" in reasons["negative.json"]
    assert "no analysis named 'nope'" in reasons["unknown.json"]
    assert "not UTF-8" in reasons["not-utf8.json"]
    assert all(f"file: {env.root / name}" in text for name, text in reasons.items())
    assert (rejected / "broken.json").read_text() == bad["broken.json"]  # kept exactly, never deleted
    assert young.exists()

    make_old(young)
    again = env.tick()
    assert "1 new file(s), 1 rejected" in message(again)
    assert (rejected / "young.json").exists() and not young.exists()
    # A second bad file with a name already in rejected/ keeps both.
    (env.root / "broken.json").write_text("{")
    make_old(env.root / "broken.json")
    env.tick()
    assert len([n for n in files_in(rejected) if n.startswith("broken.") and n.endswith(".json")]) == 2


# ---- cap and backlog ----------------------------------------------------------------------------
def test_per_tick_cap_carries_the_backlog_over_later_ticks(env_factory: Any) -> None:
    env = env_factory(max_runs_per_tick=3, max_files_per_tick=5)
    for i in range(8):
        path = env.drop(scale=float(i + 1))
        make_old(path, 100 - i)  # oldest first
    ticks, logs = [], []
    for _ in range(5):
        ticks.append(env.tick())
        logs.append(result_log(env, ticks[-1]))
    assert [len(t.run_requests) for t in ticks] == [3, 3, 2, 0, 0]
    assert "5 new file(s)" in logs[0] and "3 new file(s)" in logs[1] and "0 new file(s)" in logs[2]
    assert "more pending jobs wait for later ticks" in logs[0]
    keys = [r.partition_key for t in ticks for r in t.run_requests]
    assert len(keys) == len(set(keys)) == 8
    # Oldest registered first.
    created = {e.partition_key: e.created_at for e in env.store.list_jobs("echo")}
    assert keys[:3] == sorted(keys[:3], key=lambda k: created[k])
    assert set(env.states().values()) == {"queued"}


def test_a_full_run_queue_holds_requests_back(env_factory: Any) -> None:
    env = env_factory(max_queued_runs=2)
    for i in range(3):
        env.drop(scale=float(i + 1))
    for _ in range(2):
        create_run_for_test(
            env.instance,
            job_name=echo.job_name,
            status=DagsterRunStatus.NOT_STARTED,
            tags={ANALYSIS_TAG: "echo"},
        )
    result = env.tick()
    assert result.run_requests == [] and "runs already queued" in message(result)
    assert set(env.states().values()) == {"pending"}  # registered all the same


# ---- retries ------------------------------------------------------------------------------------
def test_failed_jobs_are_retried_with_new_run_keys_after_a_growing_delay(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = env_factory(max_attempts=3, retry_delay_s=100.0)
    env.drop(fail=True)
    start = dt.datetime.now(dt.UTC)

    def at(seconds: float) -> None:
        monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=seconds))

    (first,) = env.tick().run_requests
    fingerprint = first.tags[FINGERPRINT_TAG]
    assert first.run_key == f"{fingerprint}:1"
    assert not env.execute(first).success
    entry = env.job(first.partition_key)
    assert (entry.state, entry.attempts) == (JobState.FAILED, 1)
    assert "echo was asked to fail" in (entry.last_error or "")

    def after_failure(seconds: float) -> None:
        """The sensor's clock ``seconds`` after the job's last failure (which happened in real time,
        seconds after ``start`` on a busy machine)."""
        failed_at = env.job(first.partition_key).updated_at
        at((failed_at - start).total_seconds() + seconds)

    after_failure(50)
    assert env.tick().run_requests == []  # 100 s not yet passed
    after_failure(101)
    (second,) = env.tick().run_requests
    assert second.run_key == f"{fingerprint}:2" and second.partition_key == first.partition_key
    assert not env.execute(second).success
    # (The runs fail in real time, seconds after `start`; the sensor's clock is what moves on.)
    after_failure(150)  # the second retry waits 200 s after the second failure
    assert env.tick().run_requests == []
    after_failure(205)
    (third,) = env.tick().run_requests
    assert third.run_key == f"{fingerprint}:3"
    assert not env.execute(third).success
    at(100_000)
    assert env.tick().run_requests == []  # MAX_ATTEMPTS reached: stays failed
    entry = env.job(first.partition_key)
    assert (entry.state, entry.attempts) == (JobState.FAILED, 3)

    # By hand: `analysis-wrapper retry` re-queues it; the sensor requests attempt 4.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(env.settings.dagster_home))
    assert cli_main(["retry"]) == 0
    assert env.job(first.partition_key).state == JobState.PENDING
    (fourth,) = env.tick().run_requests
    assert fourth.run_key == f"{fingerprint}:4"
    assert cli_main(["retry", "--analysis", "echo", "no-such-key", first.partition_key]) == 1
    assert env.job(first.partition_key).state == JobState.PENDING  # left as is (already pending)


def test_run_that_dies_without_the_asset_marking_it_fails_the_job(env_factory: Any) -> None:
    env = env_factory()
    for i in range(4):
        env.drop(scale=float(i + 1))
    env.run_events()  # first tick: starts from the recent past
    requests = env.tick().run_requests
    env.tick()  # -> queued
    runs = {}
    for request in requests:
        tags = {**request.tags, PARTITION_NAME_TAG: request.partition_key}
        runs[request.partition_key] = create_run_for_test(
            env.instance, job_name=echo.job_name, status=DagsterRunStatus.STARTED, tags=tags
        )
    killed, canceled, finished, committed = (r.partition_key for r in requests)
    # The asset started in `killed` (and counted the attempt); its worker then died.
    set_state(
        env.store, "echo", killed, state=JobState.RUNNING, run_id=runs[killed].run_id, count_attempt=True
    )
    env.instance.report_run_failed(runs[killed], "run worker was killed")
    # `canceled` never started: canceled while queued.
    env.instance.report_run_canceled(runs[canceled], "canceled from the UI")
    # `finished` is done; a late failure event of its run must not undo that.
    set_state(env.store, "echo", finished, state=JobState.DONE, run_id="other")
    env.instance.report_run_failed(runs[finished], "stale")
    # `committed` was killed after its record was written, before the registry heard of it.
    set_state(
        env.store,
        "echo",
        committed,
        state=JobState.RUNNING,
        run_id=runs[committed].run_id,
        count_attempt=True,
    )
    env.store.insert_record("echo", {"_id": env.job(committed).fingerprint})
    env.instance.report_run_failed(runs[committed], "killed after commit")

    assert env.run_events() == "1 job(s) marked failed, 1 canceled"
    entry = env.job(killed)
    assert (entry.state, entry.attempts, entry.run_id) == (JobState.FAILED, 1, runs[killed].run_id)
    assert "run worker was killed" in (entry.last_error or "")
    entry = env.job(canceled)
    assert (entry.state, entry.attempts) == (JobState.FAILED, 1)
    assert "canceled" in (entry.last_error or "")
    assert env.job(finished).state == JobState.DONE
    assert env.job(committed).state == JobState.DONE  # recorded: nothing to retry
    # Events are read once.
    assert env.run_events() == "0 job(s) marked failed, 0 canceled" and env.runs_handled == 0


def test_lost_run_of_a_dead_code_server_is_failed_and_retried(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_factory(audit_after_s=30.0, retry_delay_s=10.0)
    env.drop()
    (request,) = env.tick().run_requests
    env.tick()
    with socket.socket() as sock:  # a port nobody listens on: the code server that launched the run
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    tags = {
        **request.tags,
        PARTITION_NAME_TAG: request.partition_key,
        GRPC_INFO_TAG: json.dumps({"host": "127.0.0.1", "port": dead_port}),
    }
    run = create_run_for_test(
        env.instance, job_name=echo.job_name, status=DagsterRunStatus.STARTED, tags=tags
    )
    set_state(
        env.store,
        "echo",
        request.partition_key,
        state=JobState.RUNNING,
        run_id=run.run_id,
        count_attempt=True,
    )
    # A run of another launcher (no code server recorded) is left to Dagster's run monitoring.
    elsewhere = create_run_for_test(env.instance, job_name=echo.job_name, status=DagsterRunStatus.STARTED)
    assert env.tick().run_requests == []  # too recent to check
    start = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=31))
    result = env.tick()
    assert "1 recovered" in message(result)
    lost = env.instance.get_run_by_id(run.run_id)
    assert lost is not None and lost.status == DagsterRunStatus.FAILURE
    assert env.instance.get_run_by_id(elsewhere.run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]
    entry = env.job(request.partition_key)
    assert entry.state == JobState.FAILED and "code server that launched it" in (entry.last_error or "")
    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=60))
    (retry,) = env.tick().run_requests
    assert retry.run_key.endswith(":2")


def test_a_started_run_without_lease_is_failed_once_silent_though_a_code_server_answers(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The code server that launched the run was killed with its run worker and started again on the
    same address (a supervisor, a Kubernetes service): it answers, so only the run's silence shows that
    the worker, killed before its step took the heartbeat lease, is gone."""
    from analysis_wrapper.sensors import recovery

    env = env_factory(audit_after_s=2.0, lease_ttl_s=5.0, retry_delay_s=1.0)
    env.drop()
    (request,) = env.tick().run_requests
    env.tick()  # -> queued
    answering = json.dumps({"host": "127.0.0.1", "port": 4000})
    monkeypatch.setattr(recovery, "code_server_gone", lambda run: None)  # it answers: a new server there
    tags = {**request.tags, PARTITION_NAME_TAG: request.partition_key, GRPC_INFO_TAG: answering}
    silent = create_run_for_test(
        env.instance, job_name=echo.job_name, status=DagsterRunStatus.STARTED, tags=tags
    )
    env.instance.report_engine_event("run worker started", silent)  # its last sign of life
    # A live run of the same kind: it took its lease (its step started), so silence says nothing of it.
    live = create_run_for_test(
        env.instance, job_name=echo.job_name, status=DagsterRunStatus.STARTED, tags=tags
    )
    env.instance.report_engine_event("run worker started", live)
    heartbeat(env.store, live.run_id, 3600)
    start = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=14))
    env.tick()  # silent 14 s: less than 3 lease lifetimes (15 s), so it may still take its lease
    assert env.instance.get_run_by_id(silent.run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]
    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=16))
    result = env.tick()
    assert "(1 recovered; 1 lost runs failed)" in message(result), message(result)
    failed = env.instance.get_run_by_id(silent.run_id)
    assert failed is not None and failed.status == DagsterRunStatus.FAILURE
    assert env.instance.get_run_by_id(live.run_id).status == DagsterRunStatus.STARTED  # type: ignore[union-attr]
    # Its job, which waited queued for that run, is given back to the sensor and requested again.
    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=30))
    (again,) = env.tick().run_requests
    assert again.partition_key == request.partition_key
    end_heartbeat(live.run_id)


# ---- version change -----------------------------------------------------------------------------
def test_new_analysis_version_requests_every_job_again(env_factory: Any, tmp_path: Path) -> None:
    env = env_factory()
    for i in range(5):
        env.drop(scale=float(i + 1))
    for request in env.tick().run_requests:
        assert env.execute(request).success
    old = {e.partition_key: e.fingerprint for e in env.store.list_jobs("echo")}
    cursor = env.cursors["echo_inbox_sensor"]
    assert InboxCursor.parse(cursor).version == "1.0"

    v2 = dataclasses.replace(echo, version="2.0")
    new = env_factory(analyses=[v2], max_runs_per_tick=4, reconcile_page=2, instance=env.instance)
    new.cursors = dict(env.cursors)
    ticks = [new.tick() for _ in range(4)]
    assert [len(t.run_requests) for t in ticks] == [2, 2, 1, 0]  # the walk pages, 2 jobs per tick
    requested = {r.partition_key: r for t in ticks for r in t.run_requests}
    assert set(requested) == set(old)
    for key, request in requested.items():
        assert request.tags[FINGERPRINT_TAG] != old[key]
        assert request.run_key == f"{request.tags[FINGERPRINT_TAG]}:1"
        assert new.execute(request).success
    assert len(new.store.find_records("echo")) == 10
    assert InboxCursor.parse(new.cursors["echo_inbox_sensor"]).version == "2.0"

    off = env_factory(analyses=[dataclasses.replace(echo, version="3.0")], rerun_on_new_version=False)
    off.instance = env.instance
    off.cursors = dict(new.cursors)
    assert off.tick().run_requests == []
    assert set(off.states().values()) == {"done"}


# ---- folders and routing ------------------------------------------------------------------------
def test_jobs_reach_their_analysis_by_name_or_by_folder(env_factory: Any) -> None:
    other = dataclasses.replace(echo, name="other")
    env = env_factory(analyses=[echo, other])
    top_echo = env.drop(analysis="echo", scale=1.0)
    top_other = env.drop(analysis="other", scale=2.0)
    in_folder = env.drop(folder="other", analysis="other", scale=3.0)
    unnamed = json.loads(in_folder.read_text())
    unnamed["analysis_code"]["parameters"].pop("analysis_name")
    (env.root / "other" / "unnamed.json").write_text(json.dumps(unnamed))
    (env.root / "unnamed-top.json").write_text(json.dumps(unnamed))
    make_old(env.root / "unnamed-top.json")
    wrong_folder = env.drop(folder="echo", analysis="other", scale=4.0)

    echo_tick = env.tick("echo")
    assert [r.tags[ANALYSIS_TAG] for r in echo_tick.run_requests] == ["echo"]
    assert "1 routed" in result_log(env, echo_tick)
    assert (env.root / "other" / top_other.name).exists()  # handed to the other analysis's folder
    rejected = env.root / "rejected"
    assert (rejected / wrong_folder.name).exists()
    assert "in the inbox folder of 'echo'" in (rejected / (wrong_folder.name + REASON_SUFFIX)).read_text()
    assert (rejected / "unnamed-top.json").exists()  # two analyses served: the job must name one
    other_tick = env.tick("other")
    assert len(other_tick.run_requests) == 3
    assert {r.tags[ANALYSIS_TAG] for r in other_tick.run_requests} == {"other"}
    assert files_in(env.root / "registered" / "echo") == [top_echo.name]
    assert len(files_in(env.root / "registered" / "other")) == 3
    assert files_in(env.root / "other") == []


# ---- S3 -----------------------------------------------------------------------------------------
def test_s3_inbox_on_a_real_s3_server(env_factory: Any, moto_s3: S3Endpoint, tmp_path: Path) -> None:
    bucket = moto_s3.new_bucket("inbox")
    client = moto_s3.client()
    env = env_factory(inbox=f"s3://{bucket}/dispatch", endpoint=moto_s3.endpoint_url)
    local = tmp_path / "made"
    good = [env.drop(where=local, scale=float(i + 1)) for i in range(3)]
    for path in good[:2]:
        client.upload_file(str(path), bucket, f"dispatch/{path.name}")
    client.upload_file(str(good[2]), bucket, f"dispatch/echo/{good[2].name}")
    client.put_object(Bucket=bucket, Key="dispatch/bad.json", Body=b"{not json")
    client.put_object(Bucket=bucket, Key="dispatch/notes.txt", Body=b"ignored")
    client.put_object(Bucket=bucket, Key="elsewhere/x.json", Body=b"{}")

    result = env.tick()
    assert len(result.run_requests) == 3
    summary = result_log(env, result)
    assert "4 new file(s), 1 rejected, 0 already done, 3 registered, 3 requested" in summary
    keys = set(moto_s3.objects(bucket))
    assert {f"dispatch/registered/echo/{p.name}" for p in good} <= keys
    assert {"dispatch/rejected/bad.json", "dispatch/rejected/bad.json.reason.txt"} <= keys
    assert not any(k.startswith("dispatch/echo/") for k in keys)
    assert {"dispatch/notes.txt", "elsewhere/x.json"} <= keys
    assert "dispatch/bad.json" not in keys
    reason = client.get_object(Bucket=bucket, Key="dispatch/rejected/bad.json.reason.txt")["Body"].read()
    assert b"invalid JSON" in reason and f"s3://{bucket}/dispatch/bad.json".encode() in reason
    sources = {e.source for e in env.store.list_jobs("echo")}
    assert sources == {f"s3://{bucket}/dispatch/registered/echo/{p.name}" for p in good}
    assert "0 new file(s)" in message(env.tick())
    for request in result.run_requests:
        assert env.execute(request).success
    assert set(env.states().values()) == {"done"}


# ---- scale --------------------------------------------------------------------------------------
def _fill_registry(env: Env, count: int) -> None:
    """``count`` jobs registered, done and recorded, their files in registered/: written directly."""
    store = env.store
    now = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    batch = 10_000
    for start in range(0, count, batch):
        entries = [
            JobEntry(
                analysis="echo",
                partition_key=f"old-{i:07d}",
                fingerprint=f"{i:064x}",
                job={"s3_location": [f"/data/{i}"]},
                source=f"registered/echo/{i}.json",
                created_at=now,
                updated_at=now,
            )
            for i in range(start, min(start + batch, count))
        ]
        register_entries(store, entries)
    raw = sqlite3.connect(env.settings.sqlite_path)
    try:
        raw.execute("UPDATE jobs SET state = 'done', attempts = 1")
        raw.executemany(
            "INSERT INTO records (fingerprint, analysis, record_json, created_at) "
            "VALUES (?, 'echo', '{}', ?)",
            ((f"{i:064x}", now.isoformat()) for i in range(count)),
        )
        raw.commit()
    finally:
        raw.close()
    keys = [f"old-{i:07d}" for i in range(count)]
    for start in range(0, count, 1000):
        env.instance.add_dynamic_partitions(echo.partitions_name, keys[start : start + 1000])
    registered = env.root / "registered" / "echo"
    registered.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (registered / f"{i}.json").write_bytes(b"{}")


def _measured_tick(env: Env, monkeypatch: pytest.MonkeyPatch, new_files: int) -> dict[str, Any]:
    template = json.loads(env.drop(scale=1.0).read_text())
    for path in env.root.glob("*.json"):
        path.unlink()
    for i in range(new_files):
        job = {**template, "analysis_code": {"parameters": {"analysis_name": "echo", "scale": 1.0 + i}}}
        (env.root / f"{uuid.uuid4()}.json").write_text(json.dumps(job))
    opened: list[Inbox] = []
    real_open = sensors_module.open_inbox

    def tracking_open(*args: Any, **kwargs: Any) -> Inbox:
        inbox = real_open(*args, **kwargs)
        opened.append(inbox)
        return inbox

    monkeypatch.setattr(sensors_module, "open_inbox", tracking_open)
    store = env.store
    store.find_jobs("echo", limit=1)  # connection and schema: not part of the tick
    before = store.query_count
    clock = time.perf_counter()
    result = env.tick()
    seconds = time.perf_counter() - clock
    return {
        "queries": store.query_count - before,
        "reads": opened[0].reads,
        "listed": opened[0].listed,
        "requested": len(result.run_requests or []),
        "added": sum(len(r.partition_keys or []) for r in result.dynamic_partitions_requests or []),
        "seconds": seconds,
        "result": result,
    }


def test_one_tick_with_100000_registered_jobs_touches_only_the_new_files(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    small = env_factory(max_runs_per_tick=50)
    small.cursors["echo_inbox_sensor"] = InboxCursor(version=echo.version).dump()
    baseline = _measured_tick(small, monkeypatch, new_files=1000)

    big_root = tmp_path_factory.mktemp("big")
    big = Env(big_root, small.settings.CODE_REPOSITORY, max_runs_per_tick=50)  # type: ignore[arg-type]
    big.cursors["echo_inbox_sensor"] = InboxCursor(version=echo.version).dump()
    clock = time.perf_counter()
    _fill_registry(big, 100_000)
    setup_s = time.perf_counter() - clock
    measured = _measured_tick(big, monkeypatch, new_files=1000)

    print(
        f"\n100,000 registered + 1,000 new files: {measured['queries']} store queries, "
        f"{measured['reads']} files read, {measured['listed']} inbox entries listed, "
        f"{measured['seconds']:.2f} s (setup {setup_s:.1f} s); with an empty registry: "
        f"{baseline['queries']} queries, {baseline['seconds']:.2f} s"
    )
    assert measured["reads"] == 1000 and measured["listed"] <= 1000 + 3
    assert measured["queries"] == baseline["queries"] <= 15
    assert measured["requested"] == 50 and measured["added"] == 1000
    assert big.store.find_jobs("echo", states=[JobState.PENDING], limit=2000).__len__() == 1000
    assert measured["seconds"] < 30  # Dagster's limit is 60 s; the figure itself goes to the docs
    # The next tick reads no file and asks a constant number of queries.
    before = big.store.query_count
    nxt = big.tick()
    assert len(nxt.run_requests or []) == 50 and big.store.query_count - before <= baseline["queries"] + 3
    shutil.rmtree(big_root, ignore_errors=True)


# ---- definitions --------------------------------------------------------------------------------
def test_definitions_carry_an_inbox_sensor_per_analysis_running_by_default(
    tmp_path: Path, clean_repo: Path
) -> None:
    from dagster import DefaultSensorStatus

    from analysis_wrapper.code_location import build_definitions

    other = dataclasses.replace(echo, name="other")
    defs = build_definitions(
        settings=make_settings(tmp_path, clean_repo, SENSOR_INTERVAL_S=7), analyses=[echo, other]
    )
    names = {s.name for s in defs.sensors or []}
    summaries = {"echo_summary_sensor", "other_summary_sensor"}  # the summary assets' automation
    run_ends = {RUN_FAILURES_SENSOR_NAME, RUN_CANCELS_SENSOR_NAME}
    assert names == {"echo_inbox_sensor", "other_inbox_sensor", *run_ends, *summaries}
    for name in names:
        sensor = defs.resolve_sensor_def(name)
        assert sensor.default_status == DefaultSensorStatus.RUNNING
        assert sensor.minimum_interval_seconds == 7
    targets = {job.name for job in defs.resolve_sensor_def("echo_inbox_sensor").jobs}
    assert targets == {echo.job_name, echo.batch_job_name}
    stopped = build_definitions(
        settings=make_settings(tmp_path, clean_repo, SENSOR_START_STOPPED=True), analyses=[echo]
    )
    assert {s.default_status for s in stopped.sensors or []} == {DefaultSensorStatus.STOPPED}
    close_all_stores()


# ---- batch runs ---------------------------------------------------------------------------------
def test_pending_jobs_go_out_in_batches_and_a_lone_job_gets_its_own_run(env_factory: Any) -> None:
    env = env_factory(batch_size=3, run_slots=1)
    for i in range(7):
        env.drop(scale=float(i + 1))
    first_cursor = env.cursors.get(echo.sensor_name)
    requests = env.tick().run_requests
    # Batches of at most three, the seven jobs shared evenly: 3, 2, 2.
    assert [r.job_name for r in requests] == [echo.batch_job_name] * 3
    batches = [r.run_config["ops"]["echo_batch"]["config"]["partition_keys"] for r in requests]
    assert [len(b) for b in batches] == [3, 2, 2] and len({k for b in batches for k in b}) == 7
    assert [r.tags[BATCH_SIZE_TAG] for r in requests] == ["3", "2", "2"]
    assert all(r.run_key.startswith("batch:") and r.tags[ANALYSIS_TAG] == "echo" for r in requests)
    assert "7 requested in 3 run(s)" in env.last_summary

    # A tick that crashed before its cursor was stored is evaluated again: the same runs, same keys.
    env.cursors[echo.sensor_name] = first_cursor
    again = env.tick().run_requests
    assert [r.run_key for r in again] == [r.run_key for r in requests]

    for request in requests:
        assert env.execute(request).success
    env.tick()
    assert set(env.states().values()) == {"done"}
    assert len(env.store.find_records("echo")) == 7
    assert env.tick().run_requests == []

    # A lone job gets its own run of the result asset's partition.
    env.drop(scale=8.0)
    (lone,) = env.tick().run_requests
    assert lone.job_name == echo.job_name
    assert lone.run_key == f"{lone.tags[FINGERPRINT_TAG]}:1"


@pytest.mark.parametrize(
    ("batch_size", "run_slots", "jobs", "sizes"),
    [
        (4, 1, 6, [3, 3]),  # batches of at most four: two runs of three, not four and two
        (250, 2, 6, [3, 3]),  # one run per slot at the least, so a burst keeps both slots busy
        (250, 2, 500, [250, 250]),
        (100, 2, 250, [84, 83, 83]),
        (250, 3, 2, [1, 1]),  # never more runs than jobs
    ],
)
def test_a_ticks_jobs_are_shared_evenly_between_its_runs(
    env_factory: Any, batch_size: int, run_slots: int, jobs: int, sizes: list[int]
) -> None:
    env = env_factory(batch_size=batch_size, run_slots=run_slots, max_runs_per_tick=50)
    for i in range(jobs):
        env.drop(scale=float(i + 1))
    requests = env.tick().run_requests
    shown = [
        len(r.run_config["ops"]["echo_batch"]["config"]["partition_keys"])
        if r.job_name == echo.batch_job_name
        else 1
        for r in requests
    ]
    assert shown == sizes
    keys = {
        k
        for r in requests
        for k in (
            r.run_config.get("ops", {}).get("echo_batch", {}).get("config", {}).get("partition_keys")
            or [r.partition_key]
        )
    }
    assert len(keys) == jobs


def test_a_failed_partition_of_a_batch_is_retried_on_its_own(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_factory(batch_size=5, run_slots=1, retry_delay_s=10.0)
    env.drop(scale=1.0)
    bad = env.drop(fail=True)
    env.drop(scale=2.0)
    (request,) = env.tick().run_requests
    assert not env.execute(request).success
    env.run_events()  # the run failure is no news: the batch marked its failed job itself
    states = env.states()
    assert sorted(states.values()) == ["done", "done", "failed"]
    failed_key = next(k for k, v in states.items() if v == "failed")
    assert env.job(failed_key).attempts == 1 and bad.name in (env.job(failed_key).source or "")
    start = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=11))
    (retry,) = env.tick().run_requests
    assert retry.partition_key == failed_key and retry.run_key.endswith(":2")


def test_a_batch_run_that_dies_fails_its_running_job_and_frees_the_queued_ones(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_factory(batch_size=3, run_slots=1, audit_after_s=60.0, retry_delay_s=1000.0)
    for i in range(3):
        env.drop(scale=float(i + 1))
    env.run_events()  # first tick: starts from the recent past
    (request,) = env.tick().run_requests
    env.tick()  # -> queued
    done, running, waiting = request.run_config["ops"]["echo_batch"]["config"]["partition_keys"]
    run = create_run_for_test(
        env.instance,
        job_name=echo.batch_job_name,
        run_config=request.run_config,
        status=DagsterRunStatus.STARTED,
        tags=request.tags,
    )
    # The batch committed `done`, was working on `running`, had not reached `waiting`.
    set_state(env.store, "echo", done, state=JobState.DONE, run_id=run.run_id, count_attempt=True)
    env.store.insert_record("echo", {"_id": env.job(done).fingerprint})
    set_state(env.store, "echo", running, state=JobState.RUNNING, run_id=run.run_id, count_attempt=True)

    start = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=61))
    assert env.tick().run_requests == []  # the audit sees `waiting` held by its unfinished batch
    assert env.job(waiting).state == JobState.QUEUED

    env.instance.report_run_failed(run, "run worker was killed")
    assert "1 job(s) marked failed" in env.run_events()
    entry = env.job(running)
    assert (entry.state, entry.attempts) == (JobState.FAILED, 1)
    assert "run worker was killed" in (entry.last_error or "")
    assert env.job(done).state == JobState.DONE

    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=122))
    (again,) = env.tick().run_requests  # no run holds `waiting` any more: it goes out again
    assert again.partition_key == waiting and again.run_key.endswith(":1")


def test_a_batch_canceled_in_the_queue_goes_out_again_under_a_new_run_key(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster never runs a sensor's run key twice: the same jobs sent back must get a new key."""
    env = env_factory(batch_size=3, run_slots=1, audit_after_s=60.0)
    for i in range(3):
        env.drop(scale=float(i + 1))
    env.run_events()
    (request,) = env.tick().run_requests
    env.tick()  # -> queued
    run = create_run_for_test(
        env.instance,
        job_name=echo.batch_job_name,
        run_config=request.run_config,
        status=DagsterRunStatus.NOT_STARTED,
        tags=request.tags,
    )
    env.instance.report_run_canceled(run, "canceled from the UI")
    assert env.run_events() == "0 job(s) marked failed, 0 canceled"  # none had started
    start = dt.datetime.now(dt.UTC)
    monkeypatch.setattr(sensors_module, "utcnow", lambda: start + dt.timedelta(seconds=61))
    (again,) = env.tick().run_requests
    keys = request.run_config["ops"]["echo_batch"]["config"]["partition_keys"]
    assert again.run_config["ops"]["echo_batch"]["config"]["partition_keys"] == keys
    assert again.run_key != request.run_key
    assert env.execute(again).success
    assert set(env.states().values()) == {"done"}


# ---- bad entries never stop a tick (issue 11, items 3, 6, 7 and 8) -----------------------------
def test_entries_that_are_no_job_files_are_quarantined_once_and_never_stop_a_tick(
    env_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    env = env_factory()
    good = [env.drop(scale=float(i + 1)) for i in range(2)]
    long_good = env.root / ("g" * 244 + ".json")  # 249 characters
    env.drop(scale=9.0).rename(long_good)
    root = env.root
    (root / "loop.json").symlink_to("loop.json")  # ln -s loop.json loop.json
    (root / "echo").write_text("a plain file named like the analysis's folder")
    (root / "dir.json").mkdir()
    os.mkfifo(root / "fifo.json")  # reading it would block the tick forever
    (root / "dangling.json").symlink_to(root / "gone.json")
    long_bad = root / ("b" * 244 + ".json")
    long_bad.write_text("{ broken")
    for path in (long_bad, *good, long_good):
        make_old(path)

    result = env.tick()
    summary = result_log(env, result)
    assert len(result.run_requests) == 3, summary
    assert "6 rejected" in summary and "3 registered" in summary, summary
    assert sorted(p.name for p in root.iterdir()) == ["registered", "rejected"]
    rejected = root / "rejected"
    reasons = {p.name.removesuffix(REASON_SUFFIX): p.read_text() for p in rejected.glob("*" + REASON_SUFFIX)}
    assert "symbolic link loop" in reasons["loop.json"]
    assert "named like the inbox folder of analysis 'echo'" in reasons["echo"]
    assert "a directory, not a regular file" in reasons["dir.json"]
    assert "a FIFO" in reasons["fifo.json"]
    assert "symbolic link to nothing" in reasons["dangling.json"]
    (long_reason,) = [text for name, text in reasons.items() if name.startswith("bbbb")]
    assert "invalid JSON" in long_reason and f"file: {long_bad}" in long_reason
    assert all(len(p.name.encode()) <= 255 for p in rejected.iterdir())
    assert all(os.path.lexists(rejected / name) for name in reasons)  # each kept beside its reason
    sources = {e.source for e in env.store.list_jobs("echo")}
    assert len(sources) == 3 and all(Path(s).is_file() for s in sources)  # every source exists

    caplog.clear()
    again = env.tick()
    assert "0 new file(s)" in result_log(env, again)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # nothing warned twice
    make_old(env.drop(folder="echo", scale=5.0))  # the analysis's folder is free for job files again
    assert "1 new file(s), 0 rejected, 0 already done, 1 registered" in result_log(env, env.tick())


WRITER = """
import json, os, sys, time
path, stop, template = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
n = 0
while not os.path.exists(stop):
    n += 1
    template["analysis_code"]["parameters"]["scale"] = float(n)
    with open(path, "w") as f:  # rewritten in place, as an editor or a careless dispatcher does
        f.write(json.dumps(template))
    time.sleep(0.002)
print(n)
"""


def test_a_file_rewritten_in_place_during_ticks_never_loses_its_job(
    env_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from analysis_wrapper.job_file import parse_job_text
    from analysis_wrapper.make_job import build_analysis_job

    env = env_factory()
    template = json.loads(env.drop(scale=1.0).read_text())
    for path in env.root.glob("*.json"):
        path.unlink()
    accepted: dict[str, bytes | None] = {}  # what each accept was told it registered (for the message)
    moves: list[str] = []
    real_accept = LocalInbox.accept

    def accept(self: LocalInbox, file: Any, analysis: str, target: str, content: bytes | None = None) -> bool:
        accepted[Path(target).name] = content
        moves.append(target)
        if len(moves) % 2:  # every other move waits a little after its read, as a loaded machine does,
            time.sleep(0.005)  # so the writer lands between read and move in every run, not by luck
        return real_accept(self, file, analysis, target, content)

    monkeypatch.setattr(LocalInbox, "accept", accept)
    race, stop = env.root / "race.json", env.tmp_path / "stop-writing"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(race), str(stop), json.dumps(template)],
        stdout=subprocess.PIPE,
        text=True,
    )
    # The tick's reading step (sensors/intake.py) on its own, many times, and a whole tick every 20th.
    inbox = LocalInbox(env.root)
    counts: Counter[str] = Counter()
    try:
        while not race.exists():
            time.sleep(0.01)
        for reads in range(200):
            if reads % 20 == 0:
                env.tick()
            Intake(echo, env.served, env.store, inbox, env.config, counts, sensors_module.log).read(
                time.monotonic() + 10
            )
    finally:
        stop.touch()
        rewrites = int(writer.communicate(timeout=30)[0])
    if race.exists():
        make_old(race)
        env.tick()  # the last version, now still
    print(f"{rewrites} rewrites during 200 intake passes, {inbox.rewritten} caught between read and move")
    assert rewrites >= 100 and inbox.rewritten > 0 and counts["registered"] > 10, (rewrites, counts)

    keys = {e.partition_key for e in env.store.list_jobs("echo")}
    registered = list((env.root / "registered" / "echo").iterdir())
    for path in registered:
        job = build_analysis_job(parse_job_text(path.read_bytes(), str(path)), echo)
        assert job.partition_key in keys, (
            f"{path.name} holds {job.parameters}, not registered; accepted as {accepted.get(path.name)!r}"
        )
    # Half-written reads (the writer truncates, then writes) are young and left for a later tick.
    assert not (env.root / "rejected").exists()
    assert not race.exists()
    assert len(keys) == len(registered)


def test_a_huge_job_file_is_rejected_without_being_read(env_factory: Any) -> None:
    import tracemalloc

    env = env_factory(max_job_file_bytes=64 * 1024)
    good = env.drop(scale=2.0)
    huge = env.root / "huge.json"
    with huge.open("wb") as f:
        f.truncate(1 << 30)  # 1 GiB, sparse
    for path in (good, huge):
        make_old(path)
    tracemalloc.start()
    try:
        result = env.tick()
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "1 rejected" in result_log(env, result) and len(result.run_requests) == 1
    reason = (env.root / "rejected" / ("huge.json" + REASON_SUFFIX)).read_text()
    assert "1,073,741,824 bytes, larger than MAX_JOB_FILE_BYTES (65,536)" in reason
    assert peak < 64 << 20, f"the tick's Python allocations peaked at {peak / 1e6:.0f} MB"
