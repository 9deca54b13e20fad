"""A capsule module served as it is, and the capsule's records carried over (issue 19 items 3 and 4).

The module is in the AIND analysis-wrapper template's shape (``run_capsule.py``: its imports of
analysis-pipeline-utils and aind-data-schema, ``run_analysis_jobs`` under ``__main__``), with the one
documented change (``/results/x`` -> ``x``) and ``CAPSULE_CODE_URL`` / ``CAPSULE_CODE_VERSION``. Its
records are written as the capsule writes them: analysis-pipeline-utils's own ``update_analysis_process``,
``analysis_pipeline_processing_metadata``, ``create_results_metadata`` and ``write_to_docdb`` (its DocDB
client's insert done by pymongo into SecantusDB, or by our SQLite store's insert).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from analysis_wrapper.analyses import analysis_of_module
from analysis_wrapper.cli import main
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper.store.base import JobState
from analysis_wrapper.store.sqlite import SqliteStore
from analysis_wrapper_tests.harness import write_job

MODULE = "team_capsule"
CODE_URL = "https://example.org/capsule/team-capsule"
CODE_VERSION = "3.0"

CAPSULE_SOURCE = '''"""Sizes of each input (a capsule module in the AIND template's shape)."""
import os
from pathlib import Path
from typing import List, Optional

from pydantic import Field

from aind_data_schema.base import GenericModel

from analysis_pipeline_utils.metadata import get_metadata_for_records  # noqa: F401

from analysis_pipeline_utils.analysis_dispatch_model import AnalysisDispatchModel

from analysis_pipeline_utils.utils_analysis_wrapper import run_analysis_jobs
from dotenv import load_dotenv

load_dotenv("settings.env")

CAPSULE_CODE_URL = "@URL@"
CAPSULE_CODE_VERSION = "@VERSION@"


class TeamParameters(GenericModel):
    analysis_name: str = Field(..., description="User-defined name for the analysis")
    analysis_tag: str = Field(..., description=("User-defined tag",))  # a tuple, as in the template
    threshold: int = Field(..., description="Inputs larger than this count as over")


class TeamOutputs(GenericModel):
    sizes: List[int] = Field(..., description="Size of each input in bytes")
    over: Optional[int] = Field(default=None, description="How many inputs are larger than threshold")


AnalysisSpecification = TeamParameters
AnalysisOutputModel = TeamOutputs


def run_analysis(
    analysis_dispatch_inputs: AnalysisDispatchModel, analysis_specification: AnalysisSpecification
) -> dict | None:
    with open(os.environ["TEAM_CAPSULE_CALLS"], "a") as calls:
        calls.write(type(analysis_dispatch_inputs).__module__ + "\\n")
    sizes = [Path(p).stat().st_size for p in analysis_dispatch_inputs.s3_location]
    with open("sizes.txt", "w") as f:  # was /results/sizes.txt in the capsule
        f.write(" ".join(map(str, sizes)))
    if analysis_specification.analysis_tag == "quiet":
        return None
    return {"sizes": sizes, "over": sum(s > analysis_specification.threshold for s in sizes)}


if __name__ == "__main__":
    run_analysis_jobs(
        analysis_input_model=AnalysisSpecification,
        analysis_output_model=AnalysisOutputModel,
        run_function=run_analysis,
    )
'''.replace("@URL@", CODE_URL).replace("@VERSION@", CODE_VERSION)


@pytest.fixture
def capsule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_repo: Path) -> Iterator[ModuleType]:
    """The capsule module on the path and in ANALYSIS_MODULES; a CLI working folder in ``tmp_path``."""
    code = tmp_path / "team_code"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(CAPSULE_SOURCE)
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.chdir(tmp_path)
    for name in ("DAGSTER_HOME", "ANALYSIS_BUCKET", "DOCDB_URI", "RESULTS_ROOT", "ALLOW_DIRTY", "GIT_COMMIT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DRY_RUN", "0")
    monkeypatch.setenv("CODE_REPOSITORY", str(clean_repo))
    monkeypatch.setenv("ANALYSIS_MODULES", MODULE)
    monkeypatch.setenv("TEAM_CAPSULE_CALLS", str(tmp_path / "calls.txt"))
    import importlib

    module = importlib.import_module(MODULE)
    try:
        yield module
    finally:
        close_all_stores()
        sys.modules.pop(MODULE, None)


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls.txt"
    return path.read_text().splitlines() if path.exists() else []


def write_jobs(folder: Path, sizes: list[int], threshold: int = 3, tag: str = "t") -> list[Path]:
    """One job per input file (of ``sizes`` bytes), as the AIND dispatcher writes them."""
    data = folder.parent / "data"
    data.mkdir(exist_ok=True)
    jobs = []
    for size in sizes:
        source = data / f"asset-{uuid.uuid4().hex[:8]}.bin"
        source.write_bytes(b"x" * size)
        jobs.append(write_job(folder, [source], analysis=MODULE, analysis_tag=tag, threshold=threshold))
    return jobs


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    close_all_stores()
    return code, capsys.readouterr().out


# ---- the capsule, as it ran in Code Ocean ----------------------------------------------------------


class DocDbClient:
    """What the capsule's ``MetadataDbClient.insert_one_docdb_record`` does: insert the document as given."""

    def __init__(self, insert: Any):
        self.insert = insert

    def insert_one_docdb_record(self, record: dict[str, Any]) -> Any:
        return self.insert(record)


def capsule_writes_records(
    module: ModuleType, jobs: list[Path], client: DocDbClient, results: Path, monkeypatch: pytest.MonkeyPatch
) -> list[str]:
    """``run_analysis_jobs``'s loop with analysis-pipeline-utils's own functions; only the Code Ocean
    lookup (``get_codeocean_process_metadata``) is replaced by the process it returns for this capsule,
    and S3 is left out. Returns the records' ids (``processing_prefix``)."""
    import aind_data_schema.core.processing as ps
    from aind_data_schema.base import GenericModel
    from analysis_pipeline_utils import metadata
    from analysis_pipeline_utils.analysis_dispatch_model import AnalysisDispatchModel
    from analysis_pipeline_utils.result_files import create_results_metadata

    monkeypatch.setattr(metadata, "get_docdb_client", lambda *a, **k: client)
    now = dt.datetime.now()
    base = ps.DataProcess.model_construct(
        experimenters=["scientist@example.org"],
        process_type=ps.ProcessName.ANALYSIS,
        stage=ps.ProcessStage.ANALYSIS,
        start_date_time=now,
        end_date_time=now,
        name="Team capsule",
        notes="Git commit hash: 0123abcd",
    )
    base.code = ps.Code(
        name="Team capsule",
        url=CODE_URL,
        version=CODE_VERSION,
        run_script="code/run",
        parameters={},
        input_data=[],
    )
    base = base.model_validate(base)
    base.code.parameters = GenericModel()
    processing = metadata.analysis_pipeline_processing_metadata(base)
    ids = []
    for path in jobs:
        dispatch = AnalysisDispatchModel.model_validate_json(path.read_text())
        process = metadata.update_analysis_process(base, dispatch)
        processing.data_processes = [process]
        process.start_date_time = dt.datetime.now()
        params = module.AnalysisSpecification(**process.code.parameters.model_dump())
        folder = results / path.stem
        folder.mkdir(parents=True)
        with contextlib.chdir(folder):
            output = module.run_analysis(dispatch, params)
        process.end_date_time = dt.datetime.now()
        process.output_parameters = module.AnalysisOutputModel(**output)
        record, docdb_id = create_results_metadata(processing, "capsule-results")
        metadata.write_to_docdb(record, docdb_id)
        ids.append(docdb_id)
    return ids


@contextlib.contextmanager
def record_database(
    kind: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """The capsule's record database and our settings for it: ``(client, read_all)``. MongoDB: one shared
    collection, as the capsule's DOCDB_COLLECTION; SQLite: the CLI's default store, inserted through it."""
    if kind == "sqlite":
        path = Path.cwd() / ".dagster_home" / "analysis_records.sqlite"
        store = SqliteStore(path)
        try:
            yield (
                DocDbClient(lambda doc: store.insert_record(MODULE, doc)),
                lambda: store.find_records(MODULE),
            )
        finally:
            store.close()
        return
    server = request.getfixturevalue("mongo_server")
    database = f"aw_capsule_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DOCDB_URI", server.uri)
    monkeypatch.setenv("DOCDB_DATABASE", database)
    monkeypatch.setenv("DOCDB_COLLECTION", "analysis_records")
    client = server.client()
    collection = client[database]["analysis_records"]
    try:
        yield DocDbClient(collection.insert_one), lambda: list(collection.find({}, sort=[("_id", 1)]))
    finally:
        client.drop_database(database)
        client.close()


# ---- the tests -------------------------------------------------------------------------------------


def test_a_capsule_module_is_served_as_it_is(
    capsule: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Named in ANALYSIS_MODULES, run through the CLI: AIND's own AnalysisDispatchModel, the validated
    specification, the results folder as working directory, the returned dict recorded as outputs,
    None as no outputs."""
    analysis = analysis_of_module(capsule)
    assert (analysis.name, analysis.version) == (MODULE, CODE_VERSION)
    assert (analysis.capsule_code_url, analysis.capsule_code_version) == (CODE_URL, CODE_VERSION)
    assert analysis.params is capsule.AnalysisSpecification and analysis_of_module(capsule) is analysis

    write_jobs(tmp_path / "jobs", [2, 5])
    write_jobs(tmp_path / "quiet", [1], tag="quiet")
    before = os.getcwd()
    code, out = cli(capsys, "run", str(tmp_path / "jobs"), str(tmp_path / "quiet"))
    assert code == 0, out
    assert "3 job(s): 3 done, 0 already done" in out, out
    assert os.getcwd() == before
    assert calls(tmp_path) == ["analysis_pipeline_utils.analysis_dispatch_model"] * 3

    store = SqliteStore(tmp_path / ".dagster_home" / "analysis_records.sqlite")
    records = store.find_records(MODULE)
    store.close()
    outputs = {json.dumps(r["processing"]["data_processes"][0]["output_parameters"]) for r in records}
    assert outputs == {"{}", '{"sizes": [2], "over": 0}', '{"sizes": [5], "over": 1}'}
    for record in records:
        folder = Path(record["location"])
        assert (folder / "sizes.txt").is_file(), list(folder.iterdir())
        assert (
            json.loads((folder / "outputs.json").read_text())
            == (record["processing"]["data_processes"][0]["output_parameters"])
        )


@pytest.mark.parametrize("kind", ["sqlite", "mongodb"])
def test_the_capsules_records_count_as_done(
    capsule: ModuleType,
    tmp_path: Path,
    kind: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Jobs the capsule recorded (its records written by analysis-pipeline-utils) are not computed:
    ``run`` says each was recorded by the capsule, naming its record; the capsule's records are
    unchanged; a job with a changed parameter runs."""
    jobs = write_jobs(tmp_path / "jobs", [2, 5, 7])
    with record_database(kind, request, monkeypatch) as (client, read_all):
        ids = capsule_writes_records(capsule, jobs, client, tmp_path / "capsule_results", monkeypatch)
        written = read_all()
        assert sorted(r["_id"] for r in written) == sorted(ids) and len(set(ids)) == 3
        capsule_calls = len(calls(tmp_path))

        code, out = cli(capsys, "run", str(tmp_path / "jobs"))
        assert code == 0, out
        assert "3 job(s): 0 done, 3 already done" in out, out
        lines = [line for line in out.splitlines() if line.startswith("already done")]
        assert len(lines) == 3
        for record_id in ids:
            assert sum(f"(recorded by the capsule, record {record_id})" in line for line in lines) == 1, out
        assert len(calls(tmp_path)) == capsule_calls  # nothing computed

        code, out = cli(capsys, "status", "--json")
        assert code == 0 and {s["state"] for s in json.loads(out)} == {JobState.SKIPPED.value}, out

        changed = write_jobs(tmp_path / "jobs", [4], threshold=10)
        code, out = cli(capsys, "run", str(tmp_path / "jobs"))
        assert code == 0, out
        assert "4 job(s): 1 done, 3 already done" in out, out
        assert len(calls(tmp_path)) == capsule_calls + 1
        # The capsule's records were only read.
        now = {r["_id"]: r for r in read_all()}
        assert all(now[r["_id"]] == r for r in written)
        assert len(now) == 4 and len(changed) == 1


def test_a_partition_the_capsule_recorded_shows_its_record(
    capsule: ModuleType, tmp_path: Path, harness_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Materializing a partition whose job the capsule recorded computes nothing: the skip observation
    names the capsule's record and its location; the job is marked found recorded (skipped)."""
    from dagster import AssetKey, AssetRecordsFilter

    analysis = analysis_of_module(capsule)
    h = harness_factory([analysis])
    (path,) = write_jobs(tmp_path / "jobs", [3])
    client = DocDbClient(lambda doc: h.store.insert_record(MODULE, doc))
    (record_id,) = capsule_writes_records(capsule, [path], client, tmp_path / "capsule_results", monkeypatch)
    capsule_calls = len(calls(tmp_path))
    (job,) = h.submit([path])
    assert h.store.get_job(MODULE, job.partition_key).state == JobState.SKIPPED

    result = h.materialize(MODULE, job.partition_key)
    assert result.success and len(calls(tmp_path)) == capsule_calls
    observation = (
        h.instance.fetch_observations(
            AssetRecordsFilter(asset_key=AssetKey(analysis.asset_name), asset_partitions=[job.partition_key]),
            limit=1,
        )
        .records[0]
        .asset_observation
    )
    meta = observation.metadata
    assert meta["status"].value == f"skipped: already recorded by the capsule, record {record_id}"
    assert meta["recorded_by"].value == "capsule" and meta["capsule_record_id"].value == record_id
    assert meta["results_location"].value == f"s3://capsule-results/{record_id}"
    assert h.store.get_record(MODULE, job.fingerprint) is None  # nothing of ours written
    assert h.store.get_job(MODULE, job.partition_key).state == JobState.SKIPPED


def test_the_capsule_lookup_is_one_query_per_batch(
    capsule: ModuleType, tmp_path: Path, store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 jobs, 20 of them recorded by the capsule: one fingerprint query and one capsule query find
    exactly those 20, each with its record; an analysis naming no capsule asks nothing more."""
    import dataclasses

    from analysis_wrapper.capsule_records import recorded_jobs
    from analysis_wrapper.job_file import load_job_file
    from analysis_wrapper.make_job import build_analysis_job

    analysis = analysis_of_module(capsule)
    paths = write_jobs(tmp_path / "jobs", list(range(40)))
    jobs = [build_analysis_job(load_job_file(path), analysis) for path in paths]
    client = DocDbClient(lambda doc: store.insert_record(MODULE, doc))
    ids = capsule_writes_records(capsule, paths[:20], client, tmp_path / "capsule_results", monkeypatch)
    store.existing_fingerprints(MODULE, ["warm-up"])  # the collection's indexes, made once

    before = store.query_count
    found = recorded_jobs(store, {MODULE: analysis}, jobs)
    assert store.query_count - before == 2
    assert {fp: (r.record_id if r else None) for fp, r in found.items()} == {
        job.fingerprint: record_id for job, record_id in zip(jobs, ids, strict=False)
    }

    plain = dataclasses.replace(analysis, capsule_code_url=None)
    before = store.query_count
    assert recorded_jobs(store, {MODULE: plain}, jobs) == {}
    assert store.query_count - before == 1


def test_what_the_capsule_recorded_decides(capsule: ModuleType, tmp_path: Path) -> None:
    """Matched as the capsule recorded the job: its attached data besides the job's assets and an S3 URL
    spelt with a trailing "/" still match; an app-panel override the capsule merged, or another capsule
    version, do not."""
    import aind_data_schema.core.processing as ps
    from aind_data_schema.base import GenericModel
    from aind_data_schema.components.identifiers import DataAsset
    from analysis_pipeline_utils.analysis_dispatch_model import AnalysisDispatchModel
    from analysis_pipeline_utils.metadata import update_analysis_process

    from analysis_wrapper.capsule_records import capsule_recorded
    from analysis_wrapper.job_file import parse_job
    from analysis_wrapper.make_job import build_analysis_job

    analysis = analysis_of_module(capsule)
    parameters = {"analysis_name": MODULE, "analysis_tag": "t", "threshold": 3}
    jobs = {
        name: {
            "s3_location": [f"s3://bucket/{name}"],
            "asset_name": [name],
            "docdb_record_id": [name],
            "distributed_parameters": {"threshold": 4},
            "analysis_code": {"url": CODE_URL, "parameters": parameters},
        }
        for name in ("attached", "slash", "panel", "version")
    }
    store = SqliteStore(tmp_path / "records.sqlite")
    for name, job in jobs.items():
        code = ps.Code(url=CODE_URL, version="2.0" if name == "version" else CODE_VERSION, parameters={})
        code.input_data = [DataAsset(url="s3://attached/reference")] if name == "attached" else []
        code.parameters = GenericModel()
        base = ps.DataProcess.model_construct(code=code)
        dispatched = AnalysisDispatchModel.model_validate(
            {**job, "s3_location": [f"s3://bucket/{name}/"]} if name == "slash" else job
        )
        process = update_analysis_process(
            base, dispatched, **({"analysis_tag": "panel"} if name == "panel" else {})
        )
        record = {
            "_id": f"capsule-{name}",
            "processing": {"data_processes": [process.model_dump(mode="json")]},
        }
        store.insert_record(MODULE, record)
    built = {name: build_analysis_job(parse_job(job, name), analysis) for name, job in jobs.items()}
    found = capsule_recorded(store, analysis, list(built.values()))
    store.close()
    assert {name for name, job in built.items() if job.fingerprint in found} == {"attached", "slash"}
    assert found[built["slash"].fingerprint].record_id == "capsule-slash"
