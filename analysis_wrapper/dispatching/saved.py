"""Saved queries: one small YAML file per query in ``DISPATCH_QUERIES``, re-run by a sensor each.

A file holds the analysis and the dispatch settings (:class:`~.dispatch_config.DispatchSettings`, the same
names as the CLI and the Launchpad); ``docdb_query`` may be written as YAML (a mapping) or JSON text::

    analysis: isi_violations
    docdb_query:
      data_description.modalities.abbreviation: ecephys
    file_extension: .nwb

The sensor is named after the file (``dispatch_<file stem>``). Files are read when the code location
loads: reload it after adding or changing one. A broken file stops the load with its name and field.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from analysis_wrapper.dispatching.dispatch_config import DispatchSettings
from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.job_file import field_path


class SavedQueryError(AnalysisWrapperError, ValueError):
    """A saved-query file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class SavedQuery:
    name: str
    path: Path
    analysis: str
    settings: DispatchSettings

    @property
    def sensor_name(self) -> str:
        return f"dispatch_{self.name}"

    @property
    def fingerprint(self) -> str:
        """Changes when the query or a setting changes (then the sensor's pass starts over)."""
        text = json.dumps([self.analysis, self.settings.model_dump(mode="json")], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_saved_query(path: Path, served: set[str] | None = None) -> SavedQuery:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SavedQueryError(f"{path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise SavedQueryError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SavedQueryError(f"{path}: must be a YAML mapping (analysis, docdb_query, ...)")
    data = dict(data)
    analysis = data.pop("analysis", None)
    if not isinstance(analysis, str) or not analysis:
        raise SavedQueryError(f"{path}: field 'analysis': missing (the analysis the jobs are for)")
    if served is not None and analysis not in served:
        raise SavedQueryError(
            f"{path}: field 'analysis': no analysis named {analysis!r} here "
            f"(known: {', '.join(sorted(served))})"
        )
    if isinstance(data.get("docdb_query"), dict):
        data["docdb_query"] = json.dumps(data["docdb_query"])
    unknown = sorted(set(data) - set(DispatchSettings.model_fields))
    if unknown:
        raise SavedQueryError(f"{path}: unknown field(s) {', '.join(unknown)}")
    try:
        settings = DispatchSettings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise SavedQueryError(f"{path}: field '{field_path(first['loc'])}': {first['msg']}") from None
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.stem)
    return SavedQuery(name=name, path=path, analysis=analysis, settings=settings)


def load_saved_queries(folder: Path, served: set[str] | None = None) -> list[SavedQuery]:
    """Every ``*.yaml`` / ``*.yml`` file of ``folder`` (none when the folder does not exist)."""
    if not folder.is_dir():
        return []
    paths = sorted(p for p in folder.iterdir() if p.suffix in {".yaml", ".yml"} and p.is_file())
    queries = [load_saved_query(p, served) for p in paths]
    names = [q.name for q in queries]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SavedQueryError(f"{folder}: several files give the sensor name(s) {', '.join(clashes)}")
    return queries
