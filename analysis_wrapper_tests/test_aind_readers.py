"""AIND's own readers find our records: ``get_docdb_records_partial`` (analysis-pipeline-utils 0.2.8)
builds its real filter and ``latest_only`` pipeline, and pymongo runs them on our record collection in
the MongoDB test server (``mongo_server``), whose records the CLI wrote.

The helper's module imports the Code Ocean and DocDB client packages at top level; those that are not
installed get empty stand-ins in ``sys.modules`` for the import alone, and its ``get_docdb_client`` is
replaced by a client that sends the helper's ``filter_query`` / ``pipeline`` unchanged through pymongo.

Records (one collection, ``isi_violations``): the three example jobs; the first one again with
``--force`` (its first record is kept under another ``_id`` with ``superseded_by`` set); and the second
one with another ``isi_violations_cutoff`` (another fingerprint, same input).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper.analyses.isi_violations import IsiViolationsParams
from analysis_wrapper.cli import main
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper_tests.environment import scrub_settings
from analysis_wrapper_tests.mongo_server import MongoServer, fresh_database_name

pytestmark = pytest.mark.slow

analysis_pipeline_utils = pytest.importorskip(
    "analysis_pipeline_utils", reason="analysis-pipeline-utils (installed --no-deps by scripts/setup.sh)"
)
identifiers = pytest.importorskip("aind_data_schema.components.identifiers", reason="aind-data-schema")
DataAsset = identifiers.DataAsset

COLLECTION = "isi_violations"
VARIANT_CUTOFF = 0.25
CODE = "processing.data_processes.0.code"

# What analysis_pipeline_utils.metadata imports from packages this project does not install.
STAND_INS: dict[str, tuple[str, ...]] = {
    "aind_data_access_api": (),
    "aind_data_access_api.document_db": ("MetadataDbClient",),
    "aind_data_access_api.utils": ("get_record_from_docdb",),
    "codeocean": ("CodeOcean",),
    "codeocean.computation": ("Computation", "PipelineProcess"),
    "codeocean.capsule": ("Capsule",),
}


@dataclass
class Published:
    """What the CLI wrote to the server, read back with pymongo."""

    database: str
    records: list[dict[str, Any]]
    jobs: list[dict[str, Any]]  # the three example job files, as written
    variant_job: dict[str, Any]

    def ids(self, predicate: Callable[[dict[str, Any]], bool] = lambda r: True) -> set[str]:
        return {r["_id"] for r in self.records if predicate(r)}


def code_of(record: dict[str, Any]) -> dict[str, Any]:
    return record["processing"]["data_processes"][0]["code"]


def inputs_of(job: dict[str, Any]) -> Callable[[dict[str, Any]], bool]:
    return lambda r: [d["url"] for d in code_of(r)["input_data"]] == job["s3_location"]


def superseded(record: dict[str, Any]) -> bool:
    return record["analysis_wrapper"]["superseded_by"] is not None


def cli(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    close_all_stores()
    assert code == 0, out.getvalue()
    return out.getvalue()


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory,
    mongo_server: MongoServer,
    clean_repo: Path,
    example_jobs: list[Path],
) -> Iterator[Published]:
    """Run the CLI (records="mongodb", results in a local folder) as test_s3_end_to_end does."""
    work = tmp_path_factory.mktemp("aind_readers")
    database = fresh_database_name("aind_readers")
    jobs_dir, variant_dir, scratch = work / "jobs", work / "variant", work / "tmp"
    for folder in (jobs_dir, variant_dir, scratch):
        folder.mkdir()
    job_files = [Path(shutil.copy(path, jobs_dir / path.name)) for path in example_jobs]
    jobs = [json.loads(path.read_text()) for path in job_files]
    variant = json.loads(json.dumps(jobs[1]))
    variant["distributed_parameters"] = {
        **(variant["distributed_parameters"] or {}),
        "isi_violations_cutoff": VARIANT_CUTOFF,
    }
    (variant_dir / "variant.json").write_text(json.dumps(variant))

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        scrub_settings(mp)
        mp.setenv("DAGSTER_HOME", str(work / ".dagster_home"))  # the CLI sets it; restored afterwards
        mp.setenv("DRY_RUN", "0")
        mp.setenv("CODE_REPOSITORY", str(clean_repo))
        mp.setenv("DOCDB_URI", mongo_server.uri)
        mp.setenv("DOCDB_DATABASE", database)
        mp.setattr(tempfile, "tempdir", str(scratch))
        try:
            assert "3 done, 0 already done" in cli("run", str(jobs_dir))
            assert "1 done, 0 already done" in cli("run", "--force", str(job_files[0]))
            assert "1 done, 0 already done" in cli("run", str(variant_dir))
        finally:
            close_all_stores()

    client = mongo_server.client()
    try:
        records = list(client[database][COLLECTION].find({}))
        assert len(records) == 5, [r["_id"] for r in records]
        yield Published(database, records, jobs, variant)
    finally:
        client.drop_database(database)
        client.close()


class PymongoDocDb:
    """Stands in for aind-data-access-api's ``MetadataDbClient``: the helper's filter and pipeline
    go unchanged to ``find`` / ``aggregate`` on our record collection."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection
        self.sent: list[tuple[str, Any]] = []

    def retrieve_docdb_records(
        self, filter_query: dict[str, Any] | None = None, **_: Any
    ) -> list[dict[str, Any]]:
        self.sent.append(("find", filter_query))
        return list(self.collection.find(filter_query or {}))

    def aggregate_docdb_records(self, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.sent.append(("aggregate", pipeline))
        return list(self.collection.aggregate(pipeline))


def _missing(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except ModuleNotFoundError:  # its parent package is missing
        return True


def _stand_in(name: str, attributes: tuple[str, ...]) -> types.ModuleType:
    module = types.ModuleType(name, "stand-in for a package analysis_pipeline_utils imports (not installed)")
    for attribute in attributes:
        setattr(module, attribute, type(attribute, (), {}))  # classes: the helper's annotations use `|`
    return module


@pytest.fixture(scope="module")
def aind_metadata() -> Iterator[types.ModuleType]:
    """The real ``analysis_pipeline_utils.metadata``, imported with stand-ins for missing packages only;
    removed from ``sys.modules`` again afterwards (with the stand-ins)."""
    name = "analysis_pipeline_utils.metadata"
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        for missing, attributes in STAND_INS.items():
            if _missing(missing):
                stand_in = _stand_in(missing, attributes)
                mp.setitem(sys.modules, missing, stand_in)
                parent, _, child = missing.rpartition(".")
                if parent in sys.modules:
                    mp.setattr(sys.modules[parent], child, stand_in, raising=False)
        try:
            yield importlib.import_module(name)
        finally:
            for added in set(sys.modules) - before:
                if added.startswith("analysis_pipeline_utils."):
                    del sys.modules[added]
                    with contextlib.suppress(AttributeError):
                        delattr(analysis_pipeline_utils, added.rpartition(".")[2])


@pytest.fixture
def docdb(
    aind_metadata: types.ModuleType,
    published: Published,
    mongo_server: MongoServer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[PymongoDocDb]:
    client = mongo_server.client()
    fake = PymongoDocDb(client[published.database][COLLECTION])
    monkeypatch.setattr(aind_metadata, "get_docdb_client", lambda *args, **kwargs: fake)
    try:
        yield fake
    finally:
        client.close()


def find(aind_metadata: types.ModuleType, **query: Any) -> set[str]:
    """The ``_id``s the real ``get_docdb_records_partial`` returns (each record once)."""
    found = aind_metadata.get_docdb_records_partial(**query)
    ids = [record["_id"] for record in found]
    assert len(ids) == len(set(ids)), ids
    return set(ids)


def reader_parameters(job: dict[str, Any]) -> dict[str, Any]:
    """Parameters as a reader builds them: the job's merged parameters through the Params model."""
    merged = {**job["analysis_code"]["parameters"], **(job["distributed_parameters"] or {})}
    return IsiViolationsParams(**merged).model_dump()


# ---- the tests --------------------------------------------------------------------------------


def test_code_url_and_version_find_every_record(
    aind_metadata: types.ModuleType, published: Published, docdb: PymongoDocDb
) -> None:
    url = published.jobs[0]["analysis_code"]["url"]
    version = published.jobs[0]["analysis_code"]["version"]
    assert {code_of(r)["url"] for r in published.records} == {url}
    assert find(aind_metadata, code_url=url) == published.ids()
    assert find(aind_metadata, code_url=url, code_version=version) == published.ids()
    assert find(aind_metadata, code_version=version) == published.ids()
    assert find(aind_metadata, code_url=url, code_version="0.0.0") == set()
    assert find(aind_metadata, code_url=url + "-other", code_version=version) == set()
    assert docdb.sent[-1] == ("find", {f"{CODE}.url": url + "-other", f"{CODE}.version": version})


def test_input_locations_and_data_assets_find_the_records_of_that_input(
    aind_metadata: types.ModuleType, published: Published, docdb: PymongoDocDb
) -> None:
    for job in published.jobs:
        expected = published.ids(inputs_of(job))
        # job 0: its record and the superseded one; job 1: the two cutoffs; job 2: one record
        assert len(expected) == {0: 2, 1: 2, 2: 1}[published.jobs.index(job)]
        locations = job["s3_location"]
        assert find(aind_metadata, input_data_locations=locations) == expected
        assets = [DataAsset(url=url) for url in locations]
        assert find(aind_metadata, input_data=assets) == expected
        assert docdb.sent[-1][1] == {
            f"{CODE}.input_data": {"$all": [a.model_dump(mode="json") for a in assets]}
        }
    # An asset that also names itself is another embedded document: MongoDB compares them whole.
    named = DataAsset(url=published.jobs[2]["s3_location"][0], name=published.jobs[2]["asset_name"][0])
    assert find(aind_metadata, input_data=[named]) == set()
    assert find(aind_metadata, input_data_locations=["s3://nowhere/asset"]) == set()


def test_record_input_data_entries_are_data_asset_dumps(published: Published) -> None:
    for record in published.records:
        entries = code_of(record)["input_data"]
        dumps = [DataAsset(url=entry["url"]).model_dump(mode="json") for entry in entries]
        assert entries == dumps
        assert [list(entry) for entry in entries] == [list(dump) for dump in dumps]  # field order too


def test_parameters_as_a_whole_find_exactly_the_records_with_them(
    aind_metadata: types.ModuleType, published: Published, docdb: PymongoDocDb
) -> None:
    variant = next(
        r for r in published.records if code_of(r)["parameters"]["isi_violations_cutoff"] == VARIANT_CUTOFF
    )
    # as our record holds them
    assert find(aind_metadata, parameters=code_of(variant)["parameters"]) == {variant["_id"]}
    # as a reader builds them: the merged job parameters through the Params model
    assert reader_parameters(published.variant_job) == code_of(variant)["parameters"]
    assert find(aind_metadata, parameters=reader_parameters(published.variant_job)) == {variant["_id"]}
    # the three example jobs share their parameters: every record but the variant
    second = published.jobs[1]
    assert all(reader_parameters(job) == reader_parameters(second) for job in published.jobs)
    assert find(aind_metadata, parameters=reader_parameters(second)) == published.ids() - {variant["_id"]}
    # MongoDB compares embedded documents field by field in order: same values, other order, no match
    shuffled = dict(reversed(list(reader_parameters(second).items())))
    assert shuffled == reader_parameters(second)
    assert find(aind_metadata, parameters=shuffled) == set()
    # a subset is not the whole object either
    partial = {"isi_violations_cutoff": VARIANT_CUTOFF}
    assert find(aind_metadata, parameters=partial) == set()
    assert docdb.sent[-1] == ("find", {f"{CODE}.parameters": partial})


def test_all_filters_together(
    aind_metadata: types.ModuleType, published: Published, docdb: PymongoDocDb
) -> None:
    second = published.jobs[1]
    query = {
        "code_url": second["analysis_code"]["url"],
        "code_version": second["analysis_code"]["version"],
        "input_data_locations": second["s3_location"],
    }
    both = published.ids(inputs_of(second))
    assert find(aind_metadata, **query) == both
    variant = published.ids(lambda r: code_of(r)["parameters"]["isi_violations_cutoff"] == VARIANT_CUTOFF)
    assert find(aind_metadata, **query, parameters=reader_parameters(published.variant_job)) == variant
    assert find(aind_metadata, **query, parameters=reader_parameters(second)) == both - variant
    assert find(aind_metadata, **query, parameters=reader_parameters(second), latest_only=True) == (
        both - variant
    )


def groups_by_code(docdb: PymongoDocDb) -> bool:
    """How the server evaluates the helper's ``$group`` key ``"$processing.data_processes.0.code"``.

    MongoDB (and DocumentDB) read a numeric component of an aggregation field path as a field NAME,
    not an array index: the key is ``[]`` for every record, so ``latest_only`` returns the single newest
    record the filter matches. SecantusDB indexes the array, so the key is the code object and
    ``latest_only`` returns the newest record per distinct code object. Asked of the server itself.
    """
    (probe,) = docdb.collection.aggregate([{"$limit": 1}, {"$project": {"key": f"${CODE}.version"}}])
    if probe.get("key") in (None, []):
        return False
    assert isinstance(probe["key"], str), probe
    return True


def newest(records: list[dict[str, Any]]) -> dict[str, Any]:
    return max(records, key=lambda r: r["created"])


def expected_latest(records: list[dict[str, Any]], by_code: bool) -> set[str]:
    if not by_code:
        return {newest(records)["_id"]}
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(json.dumps(code_of(record)), []).append(record)
    return {newest(group)["_id"] for group in groups.values()}


def test_latest_only_finds_the_newest_record(
    aind_metadata: types.ModuleType, published: Published, docdb: PymongoDocDb
) -> None:
    first = published.jobs[0]
    twice = [r for r in published.records if inputs_of(first)(r)]
    (current,) = [r for r in twice if not superseded(r)]
    (old,) = [r for r in twice if superseded(r)]
    assert old["analysis_wrapper"]["superseded_by"] == current["_id"]
    assert code_of(old) == code_of(current)  # one code object: one group on any server
    assert current["created"] > old["created"]
    for query in (
        {"input_data_locations": first["s3_location"]},
        {"input_data": [DataAsset(url=url) for url in first["s3_location"]]},
        {"parameters": code_of(current)["parameters"], "input_data_locations": first["s3_location"]},
    ):
        assert find(aind_metadata, **query) == {current["_id"], old["_id"]}
        assert find(aind_metadata, **query, latest_only=True) == {current["_id"]}
        kind, pipeline = docdb.sent[-1]
        assert kind == "aggregate" and pipeline[1] == {"$sort": {"created": -1}}

    # Broader filters: what "latest" groups by depends on the server (see groups_by_code).
    by_code = groups_by_code(docdb)
    url = first["analysis_code"]["url"]
    version = first["analysis_code"]["version"]
    latest = find(aind_metadata, code_url=url, code_version=version, latest_only=True)
    assert latest == expected_latest(published.records, by_code)
    if by_code:  # SecantusDB: one per job and parameters, never a superseded record
        assert len(latest) == 4 and not any(superseded(r) for r in published.records if r["_id"] in latest)
    else:  # MongoDB: the newest record of all, the variant run last
        assert latest == {newest(published.records)["_id"]}
    second = published.jobs[1]
    both = [r for r in published.records if inputs_of(second)(r)]
    assert find(aind_metadata, input_data_locations=second["s3_location"], latest_only=True) == (
        expected_latest(both, by_code)
    )


def test_created_sorts_as_time(published: Published) -> None:
    """``latest_only`` sorts ``created`` as stored (text): fixed-width UTC ISO-8601 sorts as time."""
    widths = {len(r["created"]) for r in published.records}
    assert len(widths) == 1, [r["created"] for r in published.records]
    assert all(r["created"].endswith("Z") for r in published.records)
