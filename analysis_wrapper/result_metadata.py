"""What a partition's page in the Dagster UI shows about one result, built from the result itself.

The same entries whoever made the result (the result asset, a batch run): the outputs as a table,
the figure as markdown with the image inline (the UI opens it with one click, "[Show Markdown]"),
the results folder and each input as links or table rows (a table cell wraps, a long text value is
cut at the page's edge), and the git commit the record names.
"""

from __future__ import annotations

import base64
import math
import urllib.parse
from pathlib import Path
from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema

from analysis_wrapper.s3_uri import S3Uri

LOCATION_METADATA_KEY = "results_location"
"""The results folder a partition's materialization (or observation) names; the IO manager reads it back."""

FIGURE_MAX_BYTES = 4_000_000
"""Larger figures are linked, not embedded: the event log stores every byte of the metadata."""


def json_scalar(value: Any) -> str:
    """A value as one table cell: text as is, everything else as its JSON-like text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, str) else repr(value) if value is None else str(value)


def outputs_table(values: dict[str, Any]) -> MetadataValue:
    """The analysis's outputs, one row each (``output``, ``value``)."""
    rows = [TableRecord({"output": name, "value": json_scalar(value)}) for name, value in values.items()]
    schema = TableSchema(columns=[TableColumn("output", "string"), TableColumn("value", "string")])
    return MetadataValue.table(rows, schema=schema)


def inputs_table(locations: list[str]) -> MetadataValue:
    """The job's inputs, one row each: a long path wraps in a table cell instead of being cut off."""
    rows = [TableRecord({"input": location}) for location in locations]
    return MetadataValue.table(rows, schema=TableSchema(columns=[TableColumn("input", "string")]))


def figure_markdown(name: str, data: bytes) -> MetadataValue | None:
    """The figure embedded as a ``data:`` URI in markdown (None when too large to embed)."""
    if not data or len(data) > FIGURE_MAX_BYTES:
        return None
    mime = (
        "image/svg+xml" if name.endswith(".svg") else "image/jpeg" if name.endswith(".jpg") else "image/png"
    )
    encoded = base64.b64encode(data).decode("ascii")
    return MetadataValue.md(f"![{name}](data:{mime};base64,{encoded})")


def figure_from_file(path: Path) -> MetadataValue | None:
    if not path.is_file() or path.stat().st_size > FIGURE_MAX_BYTES:
        return None
    return figure_markdown(path.name, path.read_bytes())


def location_url(location: str) -> str:
    """A link to a results folder (or a file in it): ``file://`` for a local path, the S3 console
    for ``s3://bucket/key``."""
    if S3Uri.matches(location):
        uri = S3Uri.parse(location)
        prefix = urllib.parse.quote(uri.key.rstrip("/") + "/", safe="/")
        return f"https://s3.console.aws.amazon.com/s3/buckets/{uri.bucket}?prefix={prefix}"
    if location.startswith(("http://", "https://", "file://")):
        return location
    return Path(location).absolute().as_uri()


def location_link(location: str) -> MetadataValue:
    return MetadataValue.url(location_url(location))


def record_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """The entries a recorded result shows, read from its record: outputs, location, commit."""
    wrapper = record.get("analysis_wrapper") or {}
    process = ((record.get("processing") or {}).get("data_processes") or [{}])[0]
    metadata: dict[str, Any] = {
        "fingerprint": str(record.get("_id", "")),
        "recorded_by_run": str(wrapper.get("run_id") or ""),
        "git_commit": str(wrapper.get("git_commit") or "unknown"),
        "git_dirty": bool(wrapper.get("git_dirty")),
        "outputs": outputs_table(dict(process.get("output_parameters") or {})),
    }
    location = str(record.get("location") or "")
    if location:
        metadata["results_link"] = location_link(location)
    return metadata
