"""The metadata collection the dispatcher queries (``METADATA_DOCDB_URI`` / ``_DATABASE`` / ``_COLLECTION``).

The same settings :mod:`analysis_wrapper.input_metadata` reads (the URI defaults to ``DOCDB_URI``),
and the same connection code as the store (:class:`~analysis_wrapper.store.mongo.connection.MongoConnection`):
DocumentDB-ready options, and every failure raised as a ``StoreError`` naming host and database,
never the password.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.settings import Settings
from analysis_wrapper.store.mongo.connection import MongoConnection


class MetadataDatabaseNotConfigured(AnalysisWrapperError, RuntimeError):
    """No metadata database is set."""


class MetadataDatabase(MongoConnection):
    """One metadata collection, read with aggregation pipelines."""

    def __init__(
        self, uri: str | None, *, database: str, collection: str, client: Any = None, **options: Any
    ):
        super().__init__(uri, database=database, client=client, **options)
        self.collection_name = collection

    @classmethod
    def from_settings(cls, settings: Settings) -> MetadataDatabase:
        secret = settings.METADATA_DOCDB_URI or settings.DOCDB_URI
        if secret is None:
            raise MetadataDatabaseNotConfigured(
                "no metadata database configured: set METADATA_DOCDB_URI (or DOCDB_URI), with "
                "METADATA_DOCDB_DATABASE and METADATA_DOCDB_COLLECTION, to dispatch from a query"
            )
        return cls(
            secret.get_secret_value(),
            database=settings.METADATA_DOCDB_DATABASE,
            collection=settings.METADATA_DOCDB_COLLECTION,
            tls=settings.DOCDB_TLS,
            tls_ca_file=settings.DOCDB_TLS_CA_FILE,
            server_selection_timeout_ms=settings.DOCDB_TIMEOUT_MS,
        )

    @property
    def where(self) -> str:
        """Safe to show: hosts, database and collection, no credentials."""
        return f"{self._where()}, collection {self.collection_name!r}"

    def aggregate(self, pipeline: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``pipeline`` on the collection, read to the end in one call."""
        collection = self._db()[self.collection_name]
        return self._run(
            f"query the metadata collection {self.collection_name!r}",
            lambda: [dict(doc) for doc in collection.aggregate(list(pipeline))],
        )
