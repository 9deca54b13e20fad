"""The aggregation pipeline: which records, filtered and grouped, become which jobs.

Stage for stage what the dispatcher's ``query_data_assets`` builds (analysis-pipeline-utils 0.2.8),
so the same settings pick the same assets:

1. ``$match`` the query;
2. ``drop_null_groups``: ``$match`` every ``filter_by`` and ``group_by`` field ``$ne: null``;
3. ``filter_latest`` + ``filter_by``: ``$sort`` by it descending, ``$group`` by ``filter_by`` keeping the
   ``$first`` record, ``$replaceRoot``: the newest record per group;
4. ``unwind_list_fields``: a non-list value becomes a one-element list, then ``$unwind``;
5. ``group_by``: ``$group`` pushing ``location``, ``_id`` and ``name``, with ``group_metadata`` holding
   each field's value under its name with ``.`` written ``__``; without it, each record's
   ``s3_location``/``docdb_record_id``/``asset_name`` as one-element lists.
"""

from __future__ import annotations

from typing import Any

from analysis_wrapper.dispatching.dispatch_config import DispatchSettings


def metadata_key(field: str) -> str:
    """The key a ``group_by`` field gets in ``group_metadata`` (the dispatcher's spelling)."""
    return field.replace(".", "__")


def build_pipeline(query: dict[str, Any], settings: DispatchSettings) -> list[dict[str, Any]]:
    pipeline: list[dict[str, Any]] = [{"$match": query}]
    group_fields = list(settings.filter_by) + list(settings.group_by)
    if settings.drop_null_groups and group_fields:
        pipeline.append({"$match": {field: {"$ne": None} for field in group_fields}})
    if settings.filter_latest:
        pipeline.append({"$sort": {settings.filter_latest: -1}})
        pipeline.append(
            {
                "$group": {
                    "_id": [f"${field}" for field in settings.filter_by],
                    "record": {"$first": "$$ROOT"},
                }
            }
        )
        pipeline.append({"$replaceRoot": {"newRoot": "$record"}})
    for field in settings.unwind_list_fields:
        pipeline.append(
            {
                "$addFields": {
                    field: {
                        "$cond": {"if": {"$isArray": f"${field}"}, "then": f"${field}", "else": [f"${field}"]}
                    }
                }
            }
        )
        pipeline.append({"$unwind": f"${field}"})
    if settings.group_by:
        names = [metadata_key(field) for field in settings.group_by]
        pipeline.append(
            {
                "$group": {
                    "_id": [f"${field}" for field in settings.group_by],
                    "s3_location": {"$push": "$location"},
                    "docdb_record_id": {"$push": "$_id"},
                    "asset_name": {"$push": "$name"},
                    **{
                        name: {"$first": f"${field}"}
                        for name, field in zip(names, settings.group_by, strict=True)
                    },
                }
            }
        )
        pipeline.append({"$addFields": {"group_metadata": {name: f"${name}" for name in names}}})
        pipeline.append({"$project": {name: 0 for name in names}})
    else:
        pipeline.append(
            {"$project": {"s3_location": ["$location"], "docdb_record_id": ["$_id"], "asset_name": ["$name"]}}
        )
    return pipeline
