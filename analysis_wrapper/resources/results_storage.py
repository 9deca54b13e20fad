"""Where result folders live: ``<root>/<fingerprint>/``, on a local disk or (see ``s3_storage``) in S3;
``results_resources`` holds the Dagster resources that pick one.

A storage writes one result folder in a fixed order: the analysis's files, then ``outputs.json``,
then ``metadata.nd.json``. The IO manager writes the record to the record store only after
``put_result`` returned, so a record always points to a complete folder. A folder without a record
(left by a run that died) is simply replaced by the next run.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis_wrapper.errors import AnalysisWrapperError

OUTPUTS_FILE = "outputs.json"
RECORD_FILE = "metadata.nd.json"
_RESERVED = {OUTPUTS_FILE, RECORD_FILE}


class ResultsStorageError(AnalysisWrapperError, RuntimeError):
    """A result folder could not be written or read completely."""


@dataclass(frozen=True)
class StoredFile:
    name: str  # path relative to the result folder, POSIX
    size: int


def json_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8")


def result_files(folder: Path) -> list[Path]:
    """The analysis's own files in ``folder`` (sorted; the two reserved names excluded)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    clashes = [p.name for p in files if p.relative_to(folder).as_posix() in _RESERVED]
    if clashes:
        raise ResultsStorageError(
            f"the analysis wrote {', '.join(clashes)} itself; these names are reserved for the wrapper"
        )
    return files


class ResultsStorage(abc.ABC):
    """A root under which each fingerprint has one folder."""

    @abc.abstractmethod
    def uri(self, fingerprint: str) -> str:
        """The folder's URI, as recorded in the record's ``location``."""

    @abc.abstractmethod
    def put_result(
        self, fingerprint: str, source: Path, outputs: Mapping[str, Any], record: Mapping[str, Any]
    ) -> list[StoredFile]:
        """Store ``source``'s files, then ``outputs.json``, then ``metadata.nd.json``, replacing
        any folder already there; return what was stored, verified."""

    @abc.abstractmethod
    def read_bytes(self, fingerprint: str, name: str) -> bytes:
        """One file of a result folder."""

    @abc.abstractmethod
    def list_files(self, fingerprint: str) -> list[StoredFile]:
        """The files of a result folder (empty if there is none)."""

    @abc.abstractmethod
    def move_aside(self, fingerprint: str, suffix: str) -> str | None:
        """Move a result folder to ``<fingerprint><suffix>``; return its new URI (None if absent)."""


class LocalResultsStorage(ResultsStorage):
    """Result folders on a local disk. A folder is assembled under a hidden partial name and renamed
    into place, so ``<root>/<fingerprint>/`` is either absent or complete."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()

    def folder(self, fingerprint: str) -> Path:
        return self.root / fingerprint

    def uri(self, fingerprint: str) -> str:
        return str(self.folder(fingerprint))

    def put_result(
        self, fingerprint: str, source: Path, outputs: Mapping[str, Any], record: Mapping[str, Any]
    ) -> list[StoredFile]:
        files = result_files(source)
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".partial-{fingerprint}-{uuid.uuid4().hex[:8]}"
        try:
            stored = []
            for path in files:
                rel = path.relative_to(source)
                target = partial / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                stored.append(StoredFile(rel.as_posix(), target.stat().st_size))
            for name, data in ((OUTPUTS_FILE, json_bytes(outputs)), (RECORD_FILE, json_bytes(record))):
                partial.mkdir(parents=True, exist_ok=True)
                (partial / name).write_bytes(data)
                stored.append(StoredFile(name, len(data)))
            for item in stored:
                size = (partial / item.name).stat().st_size
                if size != item.size:
                    raise ResultsStorageError(f"{item.name}: stored {size} bytes, expected {item.size}")
            final = self.folder(fingerprint)
            if final.exists():
                # Left by a run that died before its record, or being replaced under `force`.
                shutil.rmtree(final)
            os.replace(partial, final)
            return stored
        finally:
            if partial.exists():
                shutil.rmtree(partial, ignore_errors=True)

    def read_bytes(self, fingerprint: str, name: str) -> bytes:
        path = self.folder(fingerprint) / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ResultsStorageError(f"cannot read {path}: {exc.strerror}") from None

    def list_files(self, fingerprint: str) -> list[StoredFile]:
        folder = self.folder(fingerprint)
        if not folder.is_dir():
            return []
        return [
            StoredFile(p.relative_to(folder).as_posix(), p.stat().st_size)
            for p in sorted(folder.rglob("*"))
            if p.is_file()
        ]

    def move_aside(self, fingerprint: str, suffix: str) -> str | None:
        folder = self.folder(fingerprint)
        if not folder.exists():
            return None
        target = self.root / f"{fingerprint}{suffix}"
        os.replace(folder, target)
        return str(target)
