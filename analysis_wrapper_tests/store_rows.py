"""Sample rows for the record store tests: job entries, records, fresh analysis names."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from analysis_wrapper.store.base import JobEntry

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def entry(key: str, fp: str, analysis: str = "demo", **changes: Any) -> JobEntry:
    fields: dict[str, Any] = {
        "job": {"inputs": [f"s3://bucket/{key}"], "parameters": {"fp": fp}},
        "source": f"inbox/{key}.json",
        **changes,
    }
    return JobEntry(analysis=analysis, partition_key=key, fingerprint=fp, **fields)


def record(fp: str, analysis: str = "demo", minute: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "_id": fp,
        "name": fp,
        "location": f"/results/{fp}",
        "created": (T0 + dt.timedelta(minutes=minute)).isoformat(),
        "processing": {"data_processes": [{"code": {"name": analysis, "version": "1.0"}}]},
        "analysis_wrapper": {"analysis": analysis, "fingerprint": fp},
        **extra,
    }


def fresh_analysis() -> str:
    return f"a{uuid.uuid4().hex[:10]}"
