"""Synthetic provenance records and fingerprints shaped like the ones the package writes (about 8 kB each)."""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
from importlib import metadata
from typing import Any


def fingerprint(i: int) -> str:
    return hashlib.sha256(f"benchmark job {i}".encode()).hexdigest()


@functools.cache
def packages() -> dict[str, str]:
    """Installed distributions and versions, as the real record's environment part lists them."""
    found = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[name.lower()] = dist.version
    return dict(sorted(found.items()))


def record(
    fp: str, analysis: str, location: str, parameters: dict[str, Any], outputs: dict[str, Any]
) -> dict[str, Any]:
    """A record with the AIND field paths the package keeps (``processing.data_processes[0]...``)."""
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    return {
        "_id": fp,
        "name": fp,
        "location": location,
        "created": now,
        "processing": {
            "object_type": "Processing",
            "data_processes": [
                {
                    "object_type": "Data process",
                    "process_type": "Analysis",
                    "name": analysis,
                    "code": {
                        "object_type": "Code",
                        "url": "https://example.org/benchmark",
                        "name": analysis,
                        "version": "1.0.0",
                        "commit_hash": "0" * 40,
                        "run_script": "benchmarks",
                        "language": "Python",
                        "input_data": [{"object_type": "Data asset", "url": location}],
                        "parameters": parameters,
                    },
                    "experimenters": ["benchmark"],
                    "start_date_time": now,
                    "end_date_time": now,
                    "output_parameters": outputs,
                    "notes": f"Analysis {analysis} 1.0.0",
                }
            ],
        },
        "analysis_wrapper": {
            "analysis": analysis,
            "fingerprint": fp,
            "environment": {"packages": packages()},
        },
    }
