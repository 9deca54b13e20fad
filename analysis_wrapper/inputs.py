"""Give the analysis local paths for its inputs, whatever their location.

Local paths are used in place. ``s3://`` objects are fetched into a per-run cache folder (see
:mod:`analysis_wrapper.resources.s3_storage`), reused within the run and removed after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class InputNotFoundError(FileNotFoundError):
    """An input location names nothing that exists."""


def resolve_local_inputs(locations: Sequence[str], source: str) -> list[Path]:
    """Check local inputs exist; return them as paths. ``source`` names the job in errors."""
    paths = []
    for i, location in enumerate(locations):
        if location.startswith("s3://"):
            raise InputNotFoundError(
                f"{source}: input [{i}] {location} is on S3; S3 inputs need the S3 input cache"
            )
        path = Path(location)
        if not path.exists():
            raise InputNotFoundError(f"{source}: input [{i}] {location} does not exist")
        paths.append(path)
    return paths
