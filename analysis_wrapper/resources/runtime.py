"""Run-time policy shared by every analysis: dry run, dirty-tree rule, code state, scratch space."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.provenance import CodeState, code_state, default_experimenters
from analysis_wrapper.resources.s3_client import cached_client


class AnalysisRuntime(ConfigurableResource):  # type: ignore[misc]
    """Policy for a run: ``dry_run`` is the default when run config does not say (``DRY_RUN``)."""

    dry_run: bool = Field(default=True, description="Default dry-run mode (DRY_RUN); run config may override")
    allow_dirty: bool = Field(default=False, description="Post results from a dirty git tree (ALLOW_DIRTY)")
    git_commit: str | None = Field(
        default=None, description="Commit of the code where there is no .git (GIT_COMMIT)"
    )
    code_repository: str | None = Field(default=None, description="Git work tree of the analysis code")
    experimenters: list[str] = Field(default_factory=list, description="People responsible; default: user")
    s3: S3Resource
    scratch_root: str | None = Field(
        default=None, description="Where analyses write before results are stored"
    )

    def code_state(self, analysis: Analysis[Any, Any] | None = None) -> CodeState:
        """The code state of ``analysis``: ``CODE_REPOSITORY``'s work tree, else the one holding the
        analysis's own source (see :func:`analysis_wrapper.provenance.code_state`)."""
        repo = Path(self.code_repository) if self.code_repository else None
        return code_state(repo, self.git_commit, analysis)

    def s3_client(self) -> Any:
        """The shared S3 client (for S3 inputs), built on first use."""
        return cached_client(self.s3)

    def people(self) -> list[str]:
        return list(self.experimenters) or default_experimenters()
