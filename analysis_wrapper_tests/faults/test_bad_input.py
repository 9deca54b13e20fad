"""Fault suite, bad input: over 100 malformed job files and inbox entries, and hypothesis-made ones,
through the inbox sensor (ticks with ``build_sensor_context`` on an ephemeral instance) and through the
CLI (``analysis-wrapper run`` / ``submit``, in-process).

What must hold for each: it is rejected with a message naming the file and the field (or the problem,
for what has no field yet), it is kept (the sensor quarantines it beside its reason file; the CLI leaves
it where it is), it never stops the valid jobs in the same folder nor a tick, and no user-supplied
string (asset names, record ids, parameters, S3 keys, file names) chooses where anything is written:
the test's whole folder is snapshot before and after, and only the project's own folders may change.
Counts go to the fault report (``faults/report.py``).
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis_wrapper.cli import main as cli_main
from analysis_wrapper.inbox import REASON_SUFFIX
from analysis_wrapper.job_file import JobFileError, load_job_file, location_problem
from analysis_wrapper.registration import prepare_job
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper_tests.environment import scrub_settings
from analysis_wrapper_tests.faults.bad_inputs import (
    ANALYSIS,
    ESCAPE,
    BadInput,
    bad_inputs,
    changed,
    hostile_valid_jobs,
    valid_job,
)
from analysis_wrapper_tests.faults.report import record
from analysis_wrapper_tests.s3_servers import S3Endpoint
from analysis_wrapper_tests.sample_analyses import echo
from analysis_wrapper_tests.sensor_ticks import Env

FINGERPRINT_FOLDER = re.compile(r"^[0-9a-f]{64}(\.superseded-.*)?$")
PARTITION_KEY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every entry under ``root`` (not following links): its kind and, for files, size."""
    out: dict[str, tuple[str, int]] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            info = path.lstat()
            kind = "link" if path.is_symlink() else ("dir" if path.is_dir() else "file")
            out[str(path.relative_to(root))] = (kind, info.st_size if kind == "file" else 0)
    return out


def changes(before: dict[str, tuple[str, int]], after: dict[str, tuple[str, int]]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def outside(paths: set[str], allowed: tuple[str, ...]) -> list[str]:
    return sorted(p for p in paths if not any(p == a or p.startswith(a + "/") for a in allowed))


PARTS: dict[str, tuple[int, int]] = {}
"""(tried, handled) of each part of this section, summed into one ``bad_input`` row of the report."""


def report(part: str, tried: int, handled: int) -> None:
    PARTS[part] = (tried, handled)
    record(
        "bad_input",
        tried=sum(t for t, _h in PARTS.values()),
        handled=sum(h for _t, h in PARTS.values()),
        written_outside=0,
        **{f"{name}_tried": t for name, (t, _h) in sorted(PARTS.items())},
    )


def make_old(path: Path) -> None:
    then = time.time() - 3600
    os.utime(path, (then, then), follow_symlinks=False)


def expected_reason_holds(case: BadInput, where: Path, text: str) -> bool:
    return text.startswith(str(where)) and case.expect in text


# ---- the sensor ----------------------------------------------------------------------------------
def test_every_bad_input_is_quarantined_by_the_sensor_while_good_jobs_run(
    tmp_path: Path, clean_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = Env(tmp_path, clean_repo, analyses=(echo,), batch_size=25, run_slots=1, max_files_per_tick=1000)
    env.root.mkdir(parents=True)
    escape_to = tmp_path / ESCAPE / "evil.nwb"
    source = str(clean_repo / "code.py")
    cases = bad_inputs(source, escape_to)
    for case in cases:
        case.create(env.root)
    good = {f"good-{i}.json": valid_job(source, scale=float(10 + i)) for i in range(3)}
    good.update(hostile_valid_jobs(source, escape_to))
    for name, job in good.items():
        (env.root / name).write_text(json.dumps(job))
    for path in env.root.iterdir():
        make_old(path)
    originals = {c.name: c.content for c in cases if c.kind == "file"}
    before = snapshot(tmp_path)

    result = env.tick()
    (request,) = result.run_requests  # every valid job, in one batch run: nothing stopped them
    assert env.execute(request).success
    states = env.states()
    assert sorted(states.values()) == ["done"] * len(good), states

    # Each bad entry: quarantined, beside a reason naming the file and the field.
    rejected = env.root / "rejected"
    reasons: dict[str, tuple[Path, str]] = {}
    for reason_file in rejected.glob("*" + REASON_SUFFIX):
        text = reason_file.read_text()
        original = re.search(r"^file: (.*)$", text, re.M)
        assert original, text
        reasons[Path(original.group(1)).name] = (reason_file, text)
    handled = 0
    for case in cases:
        reason_file, text = reasons[case.name]
        kept = rejected / reason_file.name.removesuffix(REASON_SUFFIX)
        assert expected_reason_holds(case, env.root / case.name, text), (case.name, case.expect, text[:300])
        assert os.path.lexists(kept), case.name
        if case.name in originals and case.kind == "file":
            assert kept.read_bytes() == originals[case.name], case.name  # kept exactly as it came
        handled += 1
    assert sorted(p.name for p in env.root.iterdir()) == ["registered", "rejected"]
    assert len(list((env.root / "registered" / ANALYSIS).iterdir())) == len(good)
    assert all(Path(e.source).is_file() for e in env.store.list_jobs(ANALYSIS))

    # Nothing written anywhere a user string could choose.
    after = snapshot(tmp_path)
    allowed = ("inbox", "home", "results", "dry_run")
    assert outside(changes(before, after), allowed) == []
    assert not (tmp_path / ESCAPE).exists()
    for path in changes(before, after):  # in the inbox: the history folders, and what left the drop area
        if path.startswith("inbox/"):
            assert path.startswith(("inbox/registered", "inbox/rejected")) or path not in after, path
    assert all(FINGERPRINT_FOLDER.match(p.name) for p in (tmp_path / "results").iterdir())
    assert all(PARTITION_KEY.match(key) for key in states)

    assert "0 new file(s)" in (env.tick().skip_reason.skip_message or "")  # type: ignore[union-attr]
    assert "Traceback" not in capsys.readouterr().err
    report("sensor", len(cases), handled)
    close_all_stores()


@pytest.mark.slow
def test_every_bad_file_is_quarantined_from_an_s3_inbox_while_good_jobs_register(
    tmp_path: Path, clean_repo: Path, moto_s3: S3Endpoint
) -> None:
    """The same files as objects in an S3 inbox (every case that is bytes: S3 has no FIFOs or links)."""
    bucket = moto_s3.new_bucket("inbox")
    client = moto_s3.client()
    env = Env(
        tmp_path,
        clean_repo,
        analyses=(echo,),
        inbox=f"s3://{bucket}/dispatch",
        endpoint=moto_s3.endpoint_url,
        batch_size=25,
        run_slots=1,
        max_files_per_tick=1000,
    )
    source = str(clean_repo / "code.py")
    cases = [
        c
        for c in bad_inputs(source, tmp_path / ESCAPE / "evil.nwb")
        if c.kind == "file" and not c.sensor_only
    ]
    for case in cases:
        client.put_object(Bucket=bucket, Key=f"dispatch/{case.name}", Body=case.content)
    good = {f"good-{i}.json": valid_job(source, scale=float(10 + i)) for i in range(3)}
    good.update(hostile_valid_jobs(source, tmp_path / ESCAPE / "evil.nwb"))
    for name, job in good.items():
        client.put_object(Bucket=bucket, Key=f"dispatch/{name}", Body=json.dumps(job).encode())

    result = env.tick()
    assert len(result.run_requests) == 1 and len(env.states()) == len(good)
    objects = moto_s3.objects(bucket)
    reasons: dict[str, tuple[str, str]] = {}
    for key in objects:
        if key.endswith(REASON_SUFFIX):
            text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
            original = re.search(r"^file: s3://[^/]+/dispatch/(.*)$", text, re.M)
            assert original, text
            reasons[original.group(1)] = (key.removesuffix(REASON_SUFFIX), text)
    handled = 0
    for case in cases:
        kept, text = reasons[case.name]
        assert text.startswith(f"s3://{bucket}/dispatch/{case.name}") and case.expect in text, (
            case.name,
            text[:200],
        )
        assert client.get_object(Bucket=bucket, Key=kept)["Body"].read() == case.content
        handled += 1
    assert not [k for k in objects if k.count("/") == 1]  # nothing left in the drop area
    assert len([k for k in objects if k.startswith(f"dispatch/registered/{ANALYSIS}/")]) == len(good)
    assert not (tmp_path / ESCAPE).exists()
    report("s3_sensor", len(cases), handled)
    close_all_stores()


# ---- the CLI -------------------------------------------------------------------------------------
@pytest.fixture
def cli_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_repo: Path) -> Iterator[Path]:
    """The CLI's defaults in ``tmp_path`` (.dagster_home, analysis_results, SQLite), serving echo too."""
    monkeypatch.chdir(tmp_path)
    scrub_settings(monkeypatch)
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("CODE_REPOSITORY", str(clean_repo))
    monkeypatch.setenv("ANALYSIS_MODULES", "analysis_wrapper_tests.sample_analyses")
    yield tmp_path
    close_all_stores()


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli_main(list(args))
    close_all_stores()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rejected_lines(out: str) -> dict[str, str]:
    return {
        line.split(":", 1)[0].split(", line")[0][len("REJECTED ") :]: line
        for line in out.splitlines()
        if line.startswith("REJECTED ")
    }


@pytest.mark.slow
def test_every_bad_input_is_rejected_by_the_cli_while_good_jobs_run(
    cli_workdir: Path, clean_repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = cli_workdir / "jobs"
    jobs.mkdir()
    escape_to = cli_workdir / ESCAPE / "evil.nwb"
    source = str(clean_repo / "code.py")
    cases = [c for c in bad_inputs(source, escape_to) if not c.sensor_only]
    for case in cases:
        case.create(jobs)
    good = {f"good-{i}.json": valid_job(source, scale=float(10 + i)) for i in range(3)}
    good.update(hostile_valid_jobs(source, escape_to))
    for name, job in good.items():
        (jobs / name).write_text(json.dumps(job))
    before = snapshot(cli_workdir)

    code, out, err = cli(capsys, "run", str(jobs))
    assert code == 1, out  # files were rejected; every valid job ran all the same
    summary = f"{len(good)} job(s): {len(good)} done, 0 already done, 0 dry run, 0 failed"
    assert f"{summary}; {len(cases)} file(s) rejected" in out
    lines = rejected_lines(out)
    handled = 0
    for case in cases:
        line = lines.get(str(jobs / case.name))
        assert line is not None and case.expect in line, (case.name, case.expect, line)
        handled += 1
    assert "Traceback" not in out + err
    after = snapshot(cli_workdir)
    assert (
        outside(changes(before, after), (".dagster_home", "analysis_results", "analysis_results_dry_run"))
        == []
    )
    assert not (
        cli_workdir / ESCAPE
    ).exists()  # and every bad file is still where it was (the CLI moves nothing)
    results = [p for p in (cli_workdir / "analysis_results").iterdir() if p.name != f"{ANALYSIS}_summary"]
    assert all(FINGERPRINT_FOLDER.match(p.name) for p in results)

    code, out, err = cli(capsys, "submit", str(jobs))
    assert code == 1 and f"{len(good)} job(s) registered, {len(cases)} file(s) rejected" in out
    assert set(rejected_lines(out)) == set(lines) and "Traceback" not in out + err
    report("cli", len(cases), handled)


# ---- hypothesis ----------------------------------------------------------------------------------
HOSTILE_STRINGS = st.sampled_from(
    [
        "",
        " ",
        ".",
        "..",
        "../../x",
        "/",
        "/etc/passwd",
        "~",
        "~root/x",
        "$(id)",
        "${HOME}",
        "C:\\x",
        "s3://",
        "s3://b",
        "s3://b/",
        "s3://b//x",
        "s3://b/../x",
        "s3://../x",
        "S3://b/k",
        "s3:b/k",
        "http://x/y",
        "ftp://x/y",
        "file://h/x",
        "file:///tmp",
        "file:",
        "\x00",
        "é",
        "🙂",
        "\ud800x",
        "NaN",
        "echo",
        "nope",
        "isi_violations",
        "registered",
        "rejected",
        "a" * 300,
    ]
)
LEAVES = (
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | HOSTILE_STRINGS
)
JSON_VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "s3_location",
    "asset_name",
    "docdb_record_id",
    "file_location",
    "distributed_parameters",
    "group_metadata",
    "query",
    "analysis_code",
    "analysis_code.parameters",
    "analysis_code.parameters.scale",
    "analysis_code.parameters.fail",
    "analysis_code.parameters.analysis_name",
    "analysis_code.input_data",
    "analysis_code.url",
    "distributed_parameters.analysis_name",
    "distributed_parameters.scale",
    "asset_id",
]


@st.composite
def job_texts(draw: st.DrawFn, input_path: str) -> bytes:
    """A valid job with one to three fields replaced by anything (lists of hostile strings included),
    sometimes with bytes spliced into the text."""
    job = valid_job(input_path)
    for _ in range(draw(st.integers(1, 3))):
        value = draw(JSON_VALUES | st.lists(HOSTILE_STRINGS, max_size=3))
        job = changed(job, draw(st.sampled_from(FIELDS)), value)
    text = json.dumps(job, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 4)) == 0:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=6)) + text[at:]
    return text


INPUT = str(Path(__file__).resolve())
COUNTS = {"tried": 0, "rejected": 0, "accepted": 0}


@settings(max_examples=400, deadline=None)
@given(text=job_texts(INPUT))
def test_any_job_text_is_a_job_or_a_rejection_naming_the_file(text: bytes, tmp_path_factory: Any) -> None:
    """The parse path the CLI and the sensor share (``load_job_file`` -> ``prepare_job``): never anything
    but a valid job or a :class:`JobFileError` naming the file."""
    folder = tmp_path_factory.getbasetemp() / "hypothesis-jobs"
    folder.mkdir(exist_ok=True)
    path = folder / "job.json"
    path.write_bytes(text)
    COUNTS["tried"] += 1
    try:
        job = prepare_job(load_job_file(path), str(path), {ANALYSIS: echo})
    except JobFileError as exc:
        assert str(exc).startswith(str(path)) and exc.problem
        COUNTS["rejected"] += 1
    else:
        assert PARTITION_KEY.match(job.partition_key) and re.fullmatch(r"[0-9a-f]{64}", job.fingerprint)
        assert all(location_problem(location) is None for location in job.inputs)
        COUNTS["accepted"] += 1
    report("hypothesis_parse", COUNTS["tried"], COUNTS["rejected"] + COUNTS["accepted"])


BATCH_COUNTS = {"tried": 0, "handled_sensor": 0, "handled_cli": 0}


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(job_texts(INPUT), min_size=4, max_size=12))
def test_hypothesis_made_files_never_stop_a_tick_or_the_cli(
    texts: list[bytes],
    tmp_path: Path,
    clean_repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    here = tmp_path / uuid.uuid4().hex[:8]
    env = Env(here, clean_repo, analyses=(echo,), max_files_per_tick=1000)
    env.root.mkdir(parents=True)
    names = [f"h{i}.json" for i in range(len(texts))]
    for name, text in zip(names, texts, strict=True):
        (env.root / name).write_bytes(text)
    good = env.drop(scale=123.0)
    for path in env.root.iterdir():
        make_old(path)
    env.tick()
    registered = env.root / "registered" / ANALYSIS
    assert (registered / good.name).is_file()
    assert sorted(p.name for p in env.root.iterdir()) in (["registered"], ["registered", "rejected"])
    for name in names:
        reason = env.root / "rejected" / (name + REASON_SUFFIX)
        assert (registered / name).is_file() or (
            reason.is_file() and reason.read_text().startswith(str(env.root / name))
        ), name
    BATCH_COUNTS["tried"] += len(texts)
    BATCH_COUNTS["handled_sensor"] += len(texts)
    close_all_stores()

    # The same files through `analysis-wrapper submit`.
    jobs = here / "cli-jobs"
    jobs.mkdir()
    for name, text in zip(names, texts, strict=True):
        (jobs / name).write_bytes(text)
    monkeypatch.chdir(here)
    monkeypatch.setenv("DAGSTER_HOME", str(here / "cli-home"))
    monkeypatch.setenv("CODE_REPOSITORY", str(clean_repo))
    monkeypatch.setenv("ANALYSIS_MODULES", "analysis_wrapper_tests.sample_analyses")
    code, out, err = cli(capsys, "submit", str(jobs))
    assert code in (0, 1) and "Traceback" not in out + err
    lines = rejected_lines(out)
    for name in names:
        path = str(jobs / name)
        assert path in lines or f"({path})" in out, (name, out)
    BATCH_COUNTS["handled_cli"] += len(texts)
    report("hypothesis_sensor", BATCH_COUNTS["tried"], BATCH_COUNTS["handled_sensor"])
    report("hypothesis_cli", BATCH_COUNTS["tried"], BATCH_COUNTS["handled_cli"])
