"""One row per recorded job, from its record alone (no result folder is read).

Columns: ``partition_key``, ``session`` (the job's input asset names), ``fingerprint``,
``analysis``, ``analysis_version``, ``parameter_set`` (a short, stable label of the merged parameters:
rows with the same label ran with the same parameters), ``created``, ``inputs`` and ``parameters``
(JSON text, so a row keeps them whole), one ``param.<name>`` column per parameter and one
``out.<name>`` column per output (lists and objects as JSON text, so Parquet and CSV hold the same),
``location``, ``git_commit`` and ``run_id``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FIXED_COLUMNS = [
    "partition_key",
    "session",
    "fingerprint",
    "analysis",
    "analysis_version",
    "parameter_set",
    "created",
    "inputs",
    "parameters",
]
TAIL_COLUMNS = ["location", "git_commit", "run_id"]


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return value


def parameter_set(parameters: dict[str, Any]) -> str:
    """``p-`` and 8 hex digits of the SHA-256 of the canonical JSON of ``parameters``: the same set, the
    same label, in every summary and notebook."""
    canonical = json.dumps(parameters, sort_keys=True, separators=(",", ":"), default=str)
    return "p-" + hashlib.sha256(canonical.encode()).hexdigest()[:8]


def summary_row(record: dict[str, Any]) -> dict[str, Any]:
    """The row of one record."""
    wrapper = record.get("analysis_wrapper") or {}
    process = ((record.get("processing") or {}).get("data_processes") or [{}])[0]
    code = process.get("code") or {}
    parameters = dict(code.get("parameters") or {})
    outputs = dict(process.get("output_parameters") or {})
    row: dict[str, Any] = {
        "partition_key": wrapper.get("partition_key"),
        "session": ", ".join(wrapper.get("asset_names") or []),
        "fingerprint": record.get("_id"),
        "analysis": wrapper.get("analysis"),
        "analysis_version": wrapper.get("analysis_version") or code.get("version"),
        "parameter_set": parameter_set(parameters),
        "created": record.get("created"),
        "inputs": json.dumps(list(wrapper.get("inputs") or [])),
        "parameters": json.dumps(parameters, sort_keys=True, default=str),
    }
    row.update({f"param.{k}": _cell(v) for k, v in parameters.items()})
    row.update({f"out.{k}": _cell(v) for k, v in outputs.items()})
    row.update(
        {
            "location": record.get("location"),
            "git_commit": wrapper.get("git_commit"),
            "run_id": wrapper.get("run_id"),
        }
    )
    return row


def ordered(frame: pd.DataFrame) -> pd.DataFrame:
    """Fixed columns first, then parameters, outputs, and where it is."""
    params = sorted(c for c in frame.columns if c.startswith("param."))
    outs = sorted(c for c in frame.columns if c.startswith("out."))
    rest = [c for c in frame.columns if c not in {*FIXED_COLUMNS, *TAIL_COLUMNS, *params, *outs}]
    columns = [c for c in FIXED_COLUMNS if c in frame.columns] + params + outs + rest
    return frame[columns + [c for c in TAIL_COLUMNS if c in frame.columns]]


def summary_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    import pandas as pd  # ~0.5 s to import: paid by a summary run, not by every process loading the code

    rows = [summary_row(r) for r in records]
    if not rows:
        return pd.DataFrame(columns=[*FIXED_COLUMNS, *TAIL_COLUMNS])
    return ordered(pd.DataFrame(rows))


def merge_rows(previous: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """``previous`` with ``new`` rows replacing those of the same partition (a job re-run under a new
    version or under ``force`` has one row: its latest record), sorted by partition key."""
    import pandas as pd  # ~0.5 s to import: paid by a summary run, not by every process loading the code

    if previous.empty:
        merged = new
    elif new.empty:
        merged = previous
    else:
        kept = previous[~previous["partition_key"].isin(set(new["partition_key"]))]
        merged = pd.concat([kept, new], ignore_index=True)
    return ordered(merged.sort_values("partition_key", kind="stable").reset_index(drop=True))
