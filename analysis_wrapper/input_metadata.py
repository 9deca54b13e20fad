"""Metadata records of a job's input assets, for analyses that need them (as the capsule's example did).

The dispatcher puts each input asset's DocDB record id in ``docdb_record_id``; this fetches those
records from the metadata collection (``METADATA_DOCDB_URI`` / ``_DATABASE`` / ``_COLLECTION``;
the URI defaults to ``DOCDB_URI``) in one query, in the job's order. Missing records are logged and
left out, as the capsule did.
"""

from __future__ import annotations

import logging
from typing import Any

from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.job_file import AnalysisJob
from analysis_wrapper.settings import Settings, redact_uri

log = logging.getLogger(__name__)


class InputMetadataError(AnalysisWrapperError, RuntimeError):
    """The metadata database is not configured or cannot be read (message without credentials)."""


def _client_from_settings(settings: Settings) -> tuple[Any, str]:
    secret = settings.METADATA_DOCDB_URI or settings.DOCDB_URI
    if secret is None:
        raise InputMetadataError(
            "No metadata database configured: set METADATA_DOCDB_URI (or DOCDB_URI) "
            "to read input asset records"
        )
    import pymongo

    uri = secret.get_secret_value()
    options: dict[str, Any] = {"retryWrites": False, "serverSelectionTimeoutMS": settings.DOCDB_TIMEOUT_MS}
    if settings.DOCDB_TLS is not None:
        options["tls"] = settings.DOCDB_TLS
    if settings.DOCDB_TLS_CA_FILE:
        options["tlsCAFile"] = settings.DOCDB_TLS_CA_FILE
    return pymongo.MongoClient(uri, **options), redact_uri(uri)


def fetch_input_metadata(
    job: AnalysisJob,
    *,
    client: Any = None,
    settings: Settings | None = None,
    logger: logging.Logger | None = None,
) -> list[dict[str, Any]]:
    """The metadata records of ``job``'s input assets, in ``docdb_record_id`` order (missing ones skipped).

    ``client`` is any pymongo-compatible client (tests pass mongomock); without it one is opened from
    settings and closed afterwards.
    """
    ids = list(job.dispatch.docdb_record_id)
    if not ids:
        return []
    settings = settings or Settings()
    owned = client is None
    where = "the given client"
    if owned:
        client, where = _client_from_settings(settings)
    try:
        collection = client[settings.METADATA_DOCDB_DATABASE][settings.METADATA_DOCDB_COLLECTION]
        found = {str(doc["_id"]): doc for doc in collection.find({"_id": {"$in": ids}})}
    except Exception as exc:
        if isinstance(exc, InputMetadataError):
            raise
        raise InputMetadataError(
            f"cannot read input metadata from {where} "
            f"({settings.METADATA_DOCDB_DATABASE}.{settings.METADATA_DOCDB_COLLECTION}): {type(exc).__name__}"
        ) from None
    finally:
        if owned:
            client.close()
    for record_id in ids:
        if record_id not in found:
            (logger or log).warning("No metadata record found for id %s; skipping it", record_id)
    return [found[i] for i in ids if i in found]
