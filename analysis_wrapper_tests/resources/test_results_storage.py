"""Local results storage: complete folders only, fixed order, leftovers replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analysis_wrapper.resources.results_resources import storage_for_location
from analysis_wrapper.resources.results_storage import (
    OUTPUTS_FILE,
    RECORD_FILE,
    LocalResultsStorage,
    ResultsStorageError,
)


def scratch(tmp_path: Path) -> Path:
    src = tmp_path / "scratch"
    (src / "nested").mkdir(parents=True)
    (src / "a.csv").write_text("x\n1\n")
    (src / "nested" / "b.bin").write_bytes(b"\0" * 1000)
    return src


def test_put_result_writes_files_outputs_and_record(tmp_path: Path) -> None:
    storage = LocalResultsStorage(tmp_path / "root")
    stored = storage.put_result("f" * 64, scratch(tmp_path), {"n": 1}, {"_id": "f" * 64, "name": "f" * 64})
    assert [s.name for s in stored] == ["a.csv", "nested/b.bin", OUTPUTS_FILE, RECORD_FILE]
    assert {s.name: s.size for s in storage.list_files("f" * 64)}["nested/b.bin"] == 1000
    assert json.loads(storage.read_bytes("f" * 64, OUTPUTS_FILE)) == {"n": 1}
    assert storage.uri("f" * 64) == str(tmp_path / "root" / ("f" * 64))
    assert not [p for p in (tmp_path / "root").iterdir() if p.name.startswith(".partial")]


def test_a_leftover_folder_without_record_is_replaced(tmp_path: Path) -> None:
    storage = LocalResultsStorage(tmp_path / "root")
    leftover = tmp_path / "root" / ("e" * 64)
    leftover.mkdir(parents=True)
    (leftover / "stale.txt").write_text("from a run that died")
    storage.put_result("e" * 64, scratch(tmp_path), {}, {"_id": "e" * 64})
    assert not (leftover / "stale.txt").exists() and (leftover / "a.csv").exists()


def test_reserved_names_are_refused(tmp_path: Path) -> None:
    src = scratch(tmp_path)
    (src / OUTPUTS_FILE).write_text("{}")
    with pytest.raises(ResultsStorageError, match="reserved"):
        LocalResultsStorage(tmp_path / "root").put_result("d" * 64, src, {}, {})
    assert not (tmp_path / "root" / ("d" * 64)).exists()


def test_failure_midway_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import analysis_wrapper.resources.results_storage as module

    calls = {"n": 0}
    real_copy = module.shutil.copyfile

    def flaky_copy(src: Path, dst: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        real_copy(src, dst)

    monkeypatch.setattr(module.shutil, "copyfile", flaky_copy)
    storage = LocalResultsStorage(tmp_path / "root")
    with pytest.raises(OSError):
        storage.put_result("c" * 64, scratch(tmp_path), {}, {})
    assert list((tmp_path / "root").iterdir()) == []


def test_storage_for_a_local_location(tmp_path: Path) -> None:
    storage, name = storage_for_location(str(tmp_path / "root" / ("a" * 64)))
    assert isinstance(storage, LocalResultsStorage) and name == "a" * 64 and storage.root == tmp_path / "root"
