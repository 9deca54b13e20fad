"""Metadata records of a job's input assets, for analyses that need them (as the capsule's example did).

The dispatcher puts each input asset's DocDB record id in ``docdb_record_id``; this fetches those
records from the metadata collection (``METADATA_DOCDB_URI`` / ``_DATABASE`` / ``_COLLECTION``;
the URI defaults to ``DOCDB_URI``) in one query, in the job's order, through the dispatcher's
:class:`~analysis_wrapper.dispatching.metadata_db.MetadataDatabase` (its connection options and
credential-free errors). Missing records are logged and left out, as the capsule did.
"""

from __future__ import annotations

import logging
from typing import Any

from analysis_wrapper.dispatching.metadata_db import MetadataDatabase, MetadataDatabaseNotConfigured
from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.job_file import AnalysisJob
from analysis_wrapper.settings import Settings
from analysis_wrapper.store.base import StoreError

log = logging.getLogger(__name__)


class InputMetadataError(AnalysisWrapperError, RuntimeError):
    """The metadata database is not configured or cannot be read (message without credentials)."""


def fetch_input_metadata(
    job: AnalysisJob, settings: Settings, *, client: Any = None, logger: logging.Logger | None = None
) -> list[dict[str, Any]]:
    """The metadata records of ``job``'s input assets, in ``docdb_record_id`` order (missing ones skipped).

    ``settings`` name the metadata collection (an analysis passes ``load_settings()``); ``client`` is
    any pymongo-compatible client (tests pass mongomock), else one is opened from the settings and
    closed afterwards.
    """
    ids = list(job.dispatch.docdb_record_id)
    if not ids:
        return []
    try:
        if client is None:
            metadata = MetadataDatabase.from_settings(settings)
        else:
            metadata = MetadataDatabase(
                None,
                client=client,
                database=settings.METADATA_DOCDB_DATABASE,
                collection=settings.METADATA_DOCDB_COLLECTION,
            )
        try:
            found = {str(doc["_id"]): doc for doc in metadata.aggregate([{"$match": {"_id": {"$in": ids}}}])}
        finally:
            metadata.close()
    except (MetadataDatabaseNotConfigured, StoreError) as exc:
        raise InputMetadataError(f"cannot read input metadata: {exc}") from None
    for record_id in ids:
        if record_id not in found:
            (logger or log).warning("No metadata record found for id %s; skipping it", record_id)
    return [found[i] for i in ids if i in found]
