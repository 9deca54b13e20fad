"""Give the analysis local paths for its inputs, whatever their location.

Local paths are used in place. ``s3://`` objects (or prefixes) are fetched into a per-run cache
(:class:`~analysis_wrapper.resources.s3_input_cache.S3InputCache`), reused within the run and removed
after it; every local path there is built by :func:`~analysis_wrapper.safe_paths.contained_path`, so
no S3 key can place a file outside the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from analysis_wrapper.errors import AnalysisWrapperError
from analysis_wrapper.s3_uri import S3Uri
from analysis_wrapper.safe_paths import UnsafePathError

if TYPE_CHECKING:
    from analysis_wrapper.resources.s3_input_cache import S3InputCache


class InputNotFoundError(AnalysisWrapperError, FileNotFoundError):
    """An input location names nothing that exists (or cannot be fetched)."""


class UnsafeInputError(InputNotFoundError):
    """An S3 input whose key (or a key listed under its prefix) would be written outside the input
    cache (``/tmp/x``, ``a/../../x``): refused before anything is downloaded to that place."""


def resolve_inputs(locations: Sequence[str], source: str, cache: S3InputCache | None) -> list[Path]:
    """Local paths for ``locations``; ``source`` names the job in errors."""
    paths = []
    for i, location in enumerate(locations):
        if S3Uri.matches(location):
            if cache is None:
                raise InputNotFoundError(
                    f"{source}: input [{i}] {location} is on S3 but no S3 client is configured"
                )
            try:
                paths.append(cache.local_path(location))
            except UnsafePathError as exc:
                raise UnsafeInputError(f"{source}: input [{i}] {location}: S3 key {exc}") from None
            except FileNotFoundError as exc:
                raise InputNotFoundError(f"{source}: input [{i}] {exc}") from None
            continue
        path = Path(location)
        if not path.exists():
            raise InputNotFoundError(f"{source}: input [{i}] {location} does not exist")
        paths.append(path)
    return paths
