"""Which assets: the ``docdb_query`` (JSON text or a JSON file) or a CSV of asset ids, validated early.

A bad query should fail before anything is asked of the database, with a message that says where:
broken JSON with its line and column, a query that is not an object, an operator MongoDB does not
know (``$regx``) with the path to it, or ``$where`` (server-side JavaScript, which DocumentDB refuses).
The CSV is matched as the dispatcher matches it: ``external_links.Code Ocean.0`` in the ids.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from analysis_wrapper.errors import AnalysisWrapperError

CSV_ID_COLUMN = "asset_id"
CSV_ID_FIELD = "external_links.Code Ocean.0"

# MongoDB's query operators (find / $match), as DocumentDB supports them; $where runs JavaScript.
QUERY_OPERATORS = frozenset(
    {
        "$and", "$or", "$nor", "$not",
        "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin",
        "$exists", "$type", "$regex", "$options", "$mod", "$all", "$elemMatch", "$size",
        "$expr", "$jsonSchema", "$text", "$search", "$language", "$caseSensitive",
        "$diacriticSensitive", "$comment",
        "$bitsAllClear", "$bitsAllSet", "$bitsAnyClear", "$bitsAnySet",
        "$geoWithin", "$geoIntersects", "$near", "$nearSphere", "$geometry", "$box", "$center",
        "$centerSphere", "$polygon", "$maxDistance", "$minDistance",
    }
)  # fmt: skip
REFUSED_OPERATORS = {"$where": "runs server-side JavaScript, which DocumentDB refuses; use $expr or $regex"}


class DispatchQueryError(AnalysisWrapperError, ValueError):
    """A query or asset-id CSV that cannot be used; the message says which one and where."""


def load_query(text: str) -> tuple[dict[str, Any], str]:
    """``docdb_query`` as the dispatcher takes it: the path of a JSON file if one exists there, else JSON
    text. Returns the validated filter and where it came from (for messages and the dispatch record)."""
    text = text.strip()
    source = "docdb_query"
    if not text.startswith(("{", "[")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise DispatchQueryError(
                f"docdb_query {text[:80]!r} is neither a JSON object nor an existing JSON file"
            )
        source = f"docdb_query file {path}"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DispatchQueryError(f"{source}: cannot read it: {exc}") from None
    try:
        query = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DispatchQueryError(
            f"{source} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(query, dict):
        raise DispatchQueryError(
            f"{source} must be a JSON object (a MongoDB filter), got {type(query).__name__}"
        )
    validate_query(query, source)
    return query, source


def validate_query(query: Any, source: str = "docdb_query", path: str = "") -> None:
    """Every ``$`` key must be a MongoDB query operator; raise naming the first one that is not."""
    if isinstance(query, list):
        for index, item in enumerate(query):
            validate_query(item, source, f"{path}[{index}]")
        return
    if not isinstance(query, dict):
        return
    for key, value in query.items():
        where = f"{path}.{key}" if path else key
        if key.startswith("$"):
            if key in REFUSED_OPERATORS:
                raise DispatchQueryError(f"{source}: operator {key} at {where!r} {REFUSED_OPERATORS[key]}")
            if key not in QUERY_OPERATORS:
                raise DispatchQueryError(
                    f"{source}: unknown operator {key} at {where!r} (MongoDB query operators are e.g. "
                    "$eq, $ne, $gt, $in, $regex, $exists, $and, $or)"
                )
            if key == "$expr":
                continue  # aggregation expressions: their own operator set, checked by the server
        validate_query(value, source, where)


def read_asset_ids(path: Path) -> list[str]:
    """The non-empty ``asset_id`` values of a CSV file (as the dispatcher's ``read_asset_ids_from_csv``)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if CSV_ID_COLUMN not in (reader.fieldnames or []):
                raise DispatchQueryError(f"data_asset_csv {path}: no {CSV_ID_COLUMN!r} column")
            ids = [row[CSV_ID_COLUMN].strip() for row in reader if (row.get(CSV_ID_COLUMN) or "").strip()]
    except OSError as exc:
        raise DispatchQueryError(f"data_asset_csv {path}: cannot read it: {exc.strerror}") from None
    if not ids:
        raise DispatchQueryError(f"data_asset_csv {path}: the {CSV_ID_COLUMN!r} column is empty")
    return ids


def csv_query(path: Path) -> dict[str, Any]:
    """The filter the dispatcher builds from a CSV of asset ids."""
    return {CSV_ID_FIELD: {"$in": read_asset_ids(path)}}
