"""Small analyses for tests: fast, no NWB, and one that fails on demand."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from analysis_wrapper.analysis import Analysis


class EchoParams(BaseModel):
    analysis_name: str = "echo"
    scale: float = Field(1.0, gt=0, description="Multiplies the input size")
    fail: bool = Field(False, description="Raise inside the analysis (for failure tests)")


class EchoOutputs(BaseModel):
    n_inputs: int
    total_bytes: float


def run_echo(job: Any, params: EchoParams, results_dir: Path, logger: logging.Logger) -> EchoOutputs:
    if params.fail:
        (results_dir / "partial.txt").write_text("half-written")
        raise RuntimeError("echo was asked to fail")
    sizes = [p.stat().st_size for p in job.input_paths]
    (results_dir / "echo.txt").write_text("\n".join(str(p) for p in job.input_paths))
    (results_dir / "sub").mkdir()
    (results_dir / "sub" / "sizes.txt").write_text(",".join(map(str, sizes)))
    logger.info("echo read %d inputs", len(sizes))
    return EchoOutputs(n_inputs=len(sizes), total_bytes=sum(sizes) * params.scale)


echo = Analysis(name="echo", version="1.0", params=EchoParams, outputs=EchoOutputs, run=run_echo)


# A team's analysis as the source text of a module of its own (it reports its inputs' total size).
SIZE_ANALYSIS = """
from pydantic import BaseModel

from analysis_wrapper import Analysis


class Params(BaseModel):
    scale: float = 1.0


class Outputs(BaseModel):
    total_bytes: float


def run(job, params, results_dir, logger):
    total = sum(p.stat().st_size for p in job.input_paths) * params.scale
    (results_dir / "size.txt").write_text(str(total))
    return Outputs(total_bytes=total)


analysis = Analysis(name={name!r}, version="1", params=Params, outputs=Outputs, run=run)
"""


def size_analysis_source(name: str) -> str:
    """The source of a module defining ``analysis``, an :class:`Analysis` named ``name``."""
    return SIZE_ANALYSIS.format(name=name)
