"""Where result folders go, as Dagster resources: a local folder or an S3 prefix.

``definitions.py`` picks one (``ANALYSIS_BUCKET`` set: S3) and hands it to the results IO manager,
which never decides by itself. Both also read back any recorded ``location`` (a local path or an
``s3://`` URI), whatever is configured, and write dry runs to the local ``dry_run_root``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from analysis_wrapper.resources.results_storage import LocalResultsStorage, ResultsStorage
from analysis_wrapper.resources.s3_client import cached_client
from analysis_wrapper.resources.s3_storage import S3ResultsStorage
from analysis_wrapper.s3_uri import S3Uri


def storage_for_location(location: str, s3_client: Any = None) -> tuple[ResultsStorage, str]:
    """The storage holding a recorded ``location`` and the fingerprint folder name within it.

    Pass the configured ``s3_client`` (endpoint, credentials) for ``s3://`` locations; without it a
    default boto3 client is made, which only knows what the environment says.
    """
    if S3Uri.matches(location):
        folder = S3Uri.parse(location.rstrip("/"))
        prefix, _, name = folder.key.rpartition("/")
        return S3ResultsStorage.from_bucket_setting(f"{folder.bucket}/{prefix}", client=s3_client), name
    path = Path(location)
    return LocalResultsStorage(path.parent), path.name


class ResultsStorageResource(ConfigurableResource):  # type: ignore[misc]
    """Where result folders go; :class:`LocalResultsResource` or :class:`S3ResultsResource`."""

    s3: S3Resource
    dry_run_root: str = Field(
        default="analysis_results_dry_run", description="Local folder for dry-run results (DRY_RUN_ROOT)"
    )

    def results(self) -> ResultsStorage:
        raise NotImplementedError

    def dry_runs(self) -> LocalResultsStorage:
        return LocalResultsStorage(Path(self.dry_run_root))

    def s3_client(self) -> Any:
        """The process's shared S3 client (endpoint and credentials of the dagster-aws resource)."""
        return cached_client(self.s3)

    def at_location(self, location: str) -> tuple[ResultsStorage, str]:
        """The storage of a recorded ``location`` and its folder name (read back with this S3 client)."""
        return storage_for_location(location, self.s3_client() if S3Uri.matches(location) else None)


class LocalResultsResource(ResultsStorageResource):
    """Result folders under a local (or mounted) folder: ``<root>/<fingerprint>/``."""

    root: str = Field(default="analysis_results", description="Local folder for results (RESULTS_ROOT)")

    def results(self) -> ResultsStorage:
        return LocalResultsStorage(Path(self.root))


class S3ResultsResource(ResultsStorageResource):
    """Result folders in S3: ``s3://<bucket>/<prefix>/<fingerprint>/``, through the dagster-aws client."""

    bucket: str = Field(description="bucket[/prefix] for results (ANALYSIS_BUCKET)")
    _storage: S3ResultsStorage | None = PrivateAttr(None)

    def results(self) -> ResultsStorage:
        if self._storage is None:
            self._storage = S3ResultsStorage.from_bucket_setting(self.bucket, self.s3_client())
        return self._storage
