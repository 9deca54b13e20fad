"""Give the analysis local paths for its inputs, whatever their location.

Local paths are used in place. ``s3://`` objects (or prefixes) are fetched into a per-run cache
(:class:`~analysis_wrapper.resources.s3_storage.S3InputCache`), reused within the run and removed
after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from analysis_wrapper.resources.s3_storage import S3InputCache


class InputNotFoundError(FileNotFoundError):
    """An input location names nothing that exists (or cannot be fetched)."""


def resolve_inputs(locations: Sequence[str], source: str, cache: S3InputCache | None) -> list[Path]:
    """Local paths for ``locations``; ``source`` names the job in errors."""
    paths = []
    for i, location in enumerate(locations):
        if location.startswith("s3://"):
            if cache is None:
                raise InputNotFoundError(
                    f"{source}: input [{i}] {location} is on S3 but no S3 client is configured"
                )
            try:
                paths.append(cache.local_path(location))
            except FileNotFoundError as exc:
                raise InputNotFoundError(f"{source}: input [{i}] {exc}") from None
            continue
        path = Path(location)
        if not path.exists():
            raise InputNotFoundError(f"{source}: input [{i}] {location} does not exist")
        paths.append(path)
    return paths
