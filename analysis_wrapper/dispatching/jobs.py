"""Job dicts exactly as the dispatcher writes them, from the pipeline's records.

Each pipeline result (one asset, or one group of assets) becomes one or more jobs, as
``expand_task_list`` + ``check_task_parameters`` of analysis-pipeline-utils 0.2.8 make them:

* without ``file_extension``: one job per result, its locations as they are;
* with it: the assets' matching files in ``file_location``; assets with none are left out (and
  reported), a result with none at all gives no job; ``split_files`` N gives one job per N files
  of an asset, 0 one job per result holding every file (each file inside its asset's
  ``s3_location``, as :func:`analysis_wrapper.job_file.check_assets` asks);
* each job crossed with each parameter set (``distributed_parameters``);
* ``analysis_code``: the dispatcher's ``process.code`` for the job: the analysis's ``Code`` with
  ``input_data`` = one ``DataAsset`` per ``s3_location`` and ``parameters`` = fixed parameters,
  ``file_location`` (when set) and the job's parameter set, merged in that order; plus
  ``analysis_name`` so the job reaches its analysis here.

The dicts validate as AIND's ``AnalysisDispatchModel`` and dump back to themselves (the tests check
both). One difference, on purpose: when files are collected into one job the dispatcher builds a new
model and drops ``query`` and ``group_metadata``; here they are kept, so every job says which query
and which group it came from.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis_wrapper.job_file import ANALYSIS_NAME_PARAMETER
from analysis_wrapper.parameters import FILE_LOCATION_PARAMETER
from analysis_wrapper.provenance import data_asset

CODE_FIELDS = (
    "object_type",
    "url",
    "name",
    "version",
    "commit_hash",
    "container",
    "run_script",
    "language",
    "language_version",
    "input_data",
    "parameters",
    "core_dependency",
)


@dataclass(frozen=True)
class AssetGroup:
    """One pipeline result: one asset, or the assets of one group, in the collection's order."""

    key: str  # stable order and cursor position: the record ids
    s3_location: list[str]
    asset_name: list[str]
    docdb_record_id: list[str]
    group_metadata: dict[str, Any] | None = None


@dataclass
class Unusable:
    """Pipeline results left out, each with why (no location, no name, no matching file)."""

    reasons: list[str] = field(default_factory=list)


def groups_from_results(results: Sequence[Mapping[str, Any]], unusable: Unusable) -> list[AssetGroup]:
    """Pipeline results as :class:`AssetGroup`, sorted by record ids (a stable order for the cap and
    the sensor's cursor); results missing a location or name are left out with the reason."""
    groups = []
    for result in results:
        ids = [str(i) for i in result.get("docdb_record_id") or []]
        locations = [loc for loc in result.get("s3_location") or [] if isinstance(loc, str) and loc]
        names = [n for n in result.get("asset_name") or [] if isinstance(n, str)]
        where = f"record(s) {', '.join(ids) or '?'}"
        if not ids or len(locations) != len(ids):
            unusable.reasons.append(f"{where}: no 'location' (nothing to analyse)")
            continue
        if len(names) != len(ids):
            unusable.reasons.append(f"{where}: no 'name'")
            continue
        metadata = result.get("group_metadata")
        groups.append(
            AssetGroup(
                key=json.dumps(ids),
                s3_location=locations,
                asset_name=names,
                docdb_record_id=ids,
                group_metadata=dict(metadata) if metadata is not None else None,
            )
        )
    groups.sort(key=lambda g: g.key)
    return groups


@dataclass(frozen=True)
class JobSpec:
    """What every job of one dispatch shares: its analysis's code, fixed parameters, query text."""

    analysis: str
    code_url: str
    code_version: str
    fixed_parameters: Mapping[str, Any]
    parameter_sets: Sequence[Mapping[str, Any]]
    query: str | None
    file_extension: str = ""
    split_files: int = 1


def analysis_code(
    spec: JobSpec,
    s3_location: Sequence[str],
    file_location: Sequence[str] | None,
    params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    parameters: dict[str, Any] = {ANALYSIS_NAME_PARAMETER: spec.analysis, **spec.fixed_parameters}
    if file_location:
        parameters[FILE_LOCATION_PARAMETER] = list(file_location)
    parameters.update(params or {})
    code: dict[str, Any] = dict.fromkeys(CODE_FIELDS)
    code.update(
        object_type="Code",
        url=spec.code_url,
        name=spec.analysis,
        version=spec.code_version,
        input_data=[data_asset(url) for url in s3_location],
        parameters=parameters,
    )
    return code


def job_dict(
    spec: JobSpec,
    group: AssetGroup,
    s3_location: Sequence[str],
    asset_name: Sequence[str],
    docdb_record_id: Sequence[str],
    file_location: Sequence[str] | None,
    params: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """One job, keys in the model's order (``AnalysisDispatchModel.model_dump`` gives the same dict)."""
    return {
        "s3_location": list(s3_location),
        "asset_name": list(asset_name),
        "docdb_record_id": list(docdb_record_id),
        "file_location": list(file_location) if file_location else None,
        "distributed_parameters": dict(params) if params else None,
        "group_metadata": group.group_metadata,
        "query": spec.query,
        "analysis_code": analysis_code(spec, s3_location, file_location, params),
    }


def jobs_of_group(
    spec: JobSpec, group: AssetGroup, files: Callable[[str], list[str]] | None, unusable: Unusable
) -> Iterator[dict[str, Any]]:
    """The jobs of one pipeline result (see the module docstring); ``files(location)`` lists an
    asset's matching files when ``file_extension`` is set."""
    parts: list[tuple[list[str], list[str], list[str], list[str] | None]] = []
    if not spec.file_extension or files is None:
        parts.append((group.s3_location, group.asset_name, group.docdb_record_id, None))
    else:
        kept: list[tuple[str, str, str]] = []
        found: list[str] = []
        for location, name, record_id in zip(
            group.s3_location, group.asset_name, group.docdb_record_id, strict=True
        ):
            matched = files(location)
            if not matched:
                unusable.reasons.append(
                    f"record {record_id} ({name}): no {spec.file_extension} file under {location}"
                )
                continue
            kept.append((location, name, record_id))
            found.extend(matched)
        if not kept:
            return
        if spec.split_files:
            # Only single assets get here (grouping with split_files is refused in the settings).
            location, name, record_id = kept[0]
            size = spec.split_files
            for start in range(0, len(found), size):
                parts.append(([location], [name], [record_id], found[start : start + size]))
        else:
            parts.append(([k[0] for k in kept], [k[1] for k in kept], [k[2] for k in kept], found))
    for s3_location, asset_name, record_ids, file_location in parts:
        sets: list[Mapping[str, Any] | None] = list(spec.parameter_sets) or [None]
        for params in sets:
            yield job_dict(spec, group, s3_location, asset_name, record_ids, file_location, params)
