"""The dispatcher's settings refuse what cannot work, before any query, saying what to change; the
aggregation pipeline is the dispatcher's, stage for stage."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from analysis_wrapper.dispatching.dispatch_config import DispatchSettings
from analysis_wrapper.dispatching.grouping import build_pipeline


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "give exactly one of docdb_query"),
        ({"docdb_query": "{}", "data_asset_csv": "a.csv"}, "give exactly one of docdb_query"),
        ({"docdb_query": "{}", "filter_latest": "created"}, "filter_latest needs filter_by"),
        (
            {"docdb_query": "{}", "group_by": "subject.subject_id", "file_extension": ".nwb"},
            "split_files=1 splits an asset's files into separate jobs, which cannot be done for groups "
            "(group_by subject.subject_id): set split_files to 0",
        ),
        ({"docdb_query": "{}", "group_by": ["$x"]}, "group_by: '$x' is not a record field name"),
        ({"docdb_query": "{}", "split_files": -1}, "greater than or equal to 0"),
    ],
)
def test_settings_that_cannot_work_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DispatchSettings(**values)
    assert message in str(caught.value)


def test_grouping_with_files_in_one_job_per_group_is_allowed() -> None:
    values: dict[str, Any] = {"group_by": "subject.subject_id", "file_extension": ".nwb", "split_files": 0}
    settings = DispatchSettings(docdb_query="{}", **values)  # the app panel's one text, as a list
    assert settings.group_by == ["subject.subject_id"]


def test_pipeline_is_the_dispatchers() -> None:
    """The stages of analysis-pipeline-utils 0.2.8 ``query_data_assets`` for the same arguments
    (written out from its source: the module itself needs s3fs and aind-data-access-api to import)."""
    settings = DispatchSettings(
        docdb_query="{}",
        group_by=["subject.subject_id"],
        filter_latest="created",
        filter_by=["data_description.project_name"],
        unwind_list_fields=["data_description.modalities"],
    )
    query = {"name": {"$regex": "^6"}}
    assert build_pipeline(query, settings) == [
        {"$match": query},
        {"$match": {"data_description.project_name": {"$ne": None}, "subject.subject_id": {"$ne": None}}},
        {"$sort": {"created": -1}},
        {"$group": {"_id": ["$data_description.project_name"], "record": {"$first": "$$ROOT"}}},
        {"$replaceRoot": {"newRoot": "$record"}},
        {
            "$addFields": {
                "data_description.modalities": {
                    "$cond": {
                        "if": {"$isArray": "$data_description.modalities"},
                        "then": "$data_description.modalities",
                        "else": ["$data_description.modalities"],
                    }
                }
            }
        },
        {"$unwind": "$data_description.modalities"},
        {
            "$group": {
                "_id": ["$subject.subject_id"],
                "s3_location": {"$push": "$location"},
                "docdb_record_id": {"$push": "$_id"},
                "asset_name": {"$push": "$name"},
                "subject__subject_id": {"$first": "$subject.subject_id"},
            }
        },
        {"$addFields": {"group_metadata": {"subject__subject_id": "$subject__subject_id"}}},
        {"$project": {"subject__subject_id": 0}},
    ]
    plain = build_pipeline(query, DispatchSettings(docdb_query="{}", drop_null_groups=False))
    assert plain == [
        {"$match": query},
        {"$project": {"s3_location": ["$location"], "docdb_record_id": ["$_id"], "asset_name": ["$name"]}},
    ]
