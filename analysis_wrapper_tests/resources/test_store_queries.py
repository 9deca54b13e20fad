"""Record queries pushed into the database: parameters, code version, superseded records.

Runs on every backend of the shared store suite (SQLite, and a real MongoDB server).
"""

from __future__ import annotations

from typing import Any

from analysis_wrapper.store.base import Store
from analysis_wrapper_tests.store_rows import record


def analysis_record(fp: str, minute: int, version: str, **parameters: Any) -> dict[str, Any]:
    made = record(fp, analysis="isi", minute=minute)
    made["processing"]["data_processes"][0]["code"].update({"version": version, "parameters": parameters})
    made["analysis_wrapper"]["superseded_by"] = None
    return made


def test_find_records_by_parameters_and_version(store: Store) -> None:
    store.insert_record("isi", analysis_record("f1", 1, "1.0", threshold=1.5, tag="a", flags=[1, 2], on=True))
    store.insert_record("isi", analysis_record("f2", 2, "1.0", threshold=2.0, tag="b", flags=[1], on=False))
    f3 = analysis_record("f3", 3, "2.0", threshold=1.5, tag=None, flags=[1, 2], on=True)
    store.insert_record("isi", f3)

    def ids(**query: Any) -> list[str]:
        return [r["_id"] for r in store.find_records("isi", **query)]

    assert ids() == ["f1", "f2", "f3"]
    assert ids(parameters={"threshold": 1.5}) == ["f1", "f3"]
    assert ids(parameters={"threshold": 1.5}, code_version="2.0") == ["f3"]
    assert ids(parameters={"tag": "b"}) == ["f2"]
    assert ids(parameters={"tag": None}) == ["f3"]
    assert ids(parameters={"on": True}) == ["f1", "f3"]
    assert ids(parameters={"flags": [1, 2]}) == ["f1", "f3"]
    assert ids(parameters={"threshold": 2}) == ["f2"]  # 2 and 2.0 are the same number
    assert ids(parameters={"threshold": 9.9}) == []
    assert ids(code_version="1.0") == ["f1", "f2"]


def test_superseded_records_are_left_out_unless_asked(store: Store) -> None:
    store.insert_record("isi", analysis_record("g1", 1, "1.0", threshold=1.5))
    kept = analysis_record("g1.superseded-x", 1, "1.0", threshold=1.5)
    kept["analysis_wrapper"]["superseded_by"] = "g1"
    store.supersede_record("isi", "g1", kept)
    store.insert_record("isi", analysis_record("g1", 2, "1.0", threshold=1.5))
    assert [r["_id"] for r in store.find_records("isi")] == ["g1"]
    assert sorted(r["_id"] for r in store.find_records("isi", include_superseded=True)) == [
        "g1",
        "g1.superseded-x",
    ]
