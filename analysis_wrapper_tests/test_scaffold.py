"""``analysis-wrapper new``: a team's own project, installed into a fresh virtual environment, its own
tests run there, its analysis found by the CLI through its entry point, its code location loaded; and a
project started from a capsule module (the AIND template's ``run_capsule.py`` shape).

The fresh environment has nothing installed but the project and ``analysis_wrapper`` (``pip install
--no-deps -e``, no index); their dependencies come from this environment's site-packages through a
``.pth`` file, so nothing is downloaded."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from analysis_wrapper.cli import main
from analysis_wrapper.testing import make_job_file

REPO_ROOT = Path(__file__).resolve().parents[1]

# The AIND analysis-wrapper template's code/run_capsule.py, as a team has it (its user section, aliases,
# run function and __main__ call; only the comments are shortened).
TEMPLATE_CAPSULE = """from pydantic import Field
from typing import List, Optional, Union

from aind_data_schema.base import GenericModel

from analysis_pipeline_utils.metadata import \\
    get_metadata_for_records

from analysis_pipeline_utils.analysis_dispatch_model import \\
    AnalysisDispatchModel

from analysis_pipeline_utils.utils_analysis_wrapper import (
    run_analysis_jobs)
from dotenv import load_dotenv

load_dotenv("settings.env")


class ExampleAnalysisParameters(GenericModel):
    analysis_name: str = Field(
        ..., description="User-defined name for the analysis"
    )
    analysis_tag: str = Field(
        ..., description="User-defined tag to organize results for querying analysis output"
    )
    isi_violations_cutoff: float = Field(
        ..., description="The value to be using when filtering units by this"
    )


class ExampleAnalysisOutputs(GenericModel):
    isi_violations: List[Union[str, int]] = Field(
        ..., description="List of ISI violations detected by the analysis"
    )
    additional_info: Optional[str] = Field(
        default=None, description="Additional information about the analysis"
    )

AnalysisInputModel = ExampleAnalysisParameters
AnalysisOutputModel = ExampleAnalysisOutputs


def run_analysis(
    analysis_dispatch_inputs: AnalysisDispatchModel,
    analysis_parameters: AnalysisInputModel
) -> dict | None:
    output_parameters = {
        "isi_violations": ["example_violation_1", "example_violation_2"],
        "additional_info":
            "This is an example of additional information about the analysis."
    }
    return output_parameters

if __name__ == "__main__":
    run_analysis_jobs(
        analysis_input_model=AnalysisInputModel,
        analysis_output_model=AnalysisOutputModel,
        run_function=run_analysis
    )
"""

SETTINGS = ("DAGSTER_HOME", "DRY_RUN", "ALLOW_DIRTY", "ANALYSIS_MODULES", "DOCDB_URI", "ANALYSIS_BUCKET")


def _environment(**values: str) -> dict[str, str]:
    """This process's environment without any analysis_wrapper setting, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("PYTEST")}
    return {**env, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **values}


def _run(args: list[str | Path], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_environment(**env), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{args}: rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def fresh_venv(path: Path) -> Path:
    """A new virtual environment whose only packages are the ones installed into it later; this
    environment's site-packages (dependencies, setuptools for the build) reach it through a ``.pth``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    ours = sysconfig.get_paths()["purelib"]
    (path / "lib" / version / "site-packages" / "analysis_wrapper_env.pth").write_text(
        f"import site; site.addsitedir({ours!r})\n"
    )
    return path / "bin"


@pytest.mark.slow
def test_new_project_installs_passes_its_tests_runs_from_the_cli_and_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "size-report"
    assert main(["new", "size_report", str(project)]) == 0
    assert "analysis-wrapper run --analysis size_report" in capsys.readouterr().out
    bin_dir = fresh_venv(tmp_path / "venv")

    # --ignore-installed: never touch this environment's own analysis_wrapper (seen through the .pth).
    pip = [bin_dir / "python", "-m", "pip", "install", "--no-index", "--no-deps", "--no-build-isolation"]
    _run([*pip, "--ignore-installed", "-e", REPO_ROOT, "-e", project], tmp_path)

    tests = _run([bin_dir / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    assert "1 passed" in tests.stdout

    data = tmp_path / "data" / "session"
    data.mkdir(parents=True)
    (data / "spikes.bin").write_bytes(b"s" * 1000)
    (data / "units.csv").write_bytes(b"u" * 24)
    make_job_file(tmp_path / "jobs", [data], "size_report")
    work = tmp_path / "work"
    work.mkdir()
    settings = {"DAGSTER_HOME": str(work / "home"), "DRY_RUN": "0", "ALLOW_DIRTY": "1"}
    run = _run(
        [bin_dir / "analysis-wrapper", "run", "--analysis", "size_report", tmp_path / "jobs"],
        work,
        **settings,
    )
    assert "1 job(s): 1 done" in run.stdout, run.stdout
    results = _run([bin_dir / "analysis-wrapper", "results", "--analysis", "size_report"], work, **settings)
    assert '"n_files": 2, "total_bytes": 1024' in results.stdout, results.stdout
    assert any((work / "analysis_results").glob("*/input_sizes.csv"))

    validate = [bin_dir / "python", "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"]
    loaded = _run(validate, project, DAGSTER_HOME=str(work / "home"))
    assert "All code locations passed validation" in loaded.stdout + loaded.stderr


def test_new_from_capsule_copies_the_module_unchanged(tmp_path: Path) -> None:
    capsule = tmp_path / "run_capsule.py"
    capsule.write_text(TEMPLATE_CAPSULE)
    project = tmp_path / "isi"
    assert main(["new", "isi_capsule", str(project), "--from-capsule", str(capsule)]) == 0

    module = project / "src" / "isi_capsule" / "isi_capsule.py"
    assert module.read_bytes() == capsule.read_bytes()
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["analysis_wrapper.analyses"] == {
        "isi_capsule": "isi_capsule.isi_capsule"
    }
    assert pyproject["tool"]["dagster"]["module_name"] == "isi_capsule.definitions"
    assert set(pyproject["project"]["dependencies"]) == {
        "analysis_wrapper",
        "aind-data-schema",
        "analysis-pipeline-utils",
        "python-dotenv",
    }
    test = (project / "tests" / "test_isi_capsule.py").read_text()
    # The specification's required parameters, guessed from their types (analysis_name is the job's).
    assert "PARAMETERS = {'analysis_tag': 'example', 'isi_violations_cutoff': 0.0}" in test
    assert (
        "analysis_of_module(isi_capsule)" in (project / "src" / "isi_capsule" / "definitions.py").read_text()
    )


def test_a_capsule_naming_itself_names_the_entry_point(tmp_path: Path) -> None:
    capsule = tmp_path / "run_capsule.py"
    capsule.write_text(TEMPLATE_CAPSULE + '\nANALYSIS_NAME = "isi_from_capsule"\n')
    assert main(["new", "team_isi", str(tmp_path / "p"), "--from-capsule", str(capsule)]) == 0
    pyproject = tomllib.loads((tmp_path / "p" / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["analysis_wrapper.analyses"] == {
        "isi_from_capsule": "team_isi.team_isi"
    }


@pytest.mark.slow
def test_capsule_project_passes_its_own_tests(tmp_path: Path) -> None:
    """The generated test runs the capsule module through the real path (registration, the asset, the
    record), with the module unchanged and served by analysis_wrapper.capsule."""
    capsule = tmp_path / "run_capsule.py"
    capsule.write_text(TEMPLATE_CAPSULE)
    project = tmp_path / "isi"
    assert main(["new", "isi_capsule", str(project), "--from-capsule", str(capsule)]) == 0
    tests = _run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        project,
        PYTHONPATH=str(project / "src"),
    )
    assert "1 passed" in tests.stdout


@pytest.mark.parametrize(
    ("name", "prepare", "message"),
    [
        ("Spike-Rate", None, "project name 'Spike-Rate' must be a lowercase Python identifier"),
        ("class", None, "project name 'class' must be"),
        ("ok_name", "non_empty", "is not empty"),
        ("ok_name", "file", "is not a folder"),
        ("ok_name", "not_capsule", "is not a capsule module: it has no module-level run_analysis"),
        ("ok_name", "bad_analysis_name", "run_capsule.py's ANALYSIS_NAME 'Bad Name' must be"),
    ],
)
def test_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, prepare: str | None, message: str
) -> None:
    target = tmp_path / "project"
    args = ["new", name, str(target)]
    if prepare == "non_empty":
        target.mkdir()
        (target / "keep.txt").write_text("mine")
    elif prepare == "file":
        target.write_text("a file")
    elif prepare == "not_capsule":
        other = tmp_path / "other.py"
        other.write_text("AnalysisOutputModel = dict\nAnalysisSpecification = dict\n")
        args += ["--from-capsule", str(other)]
    elif prepare == "bad_analysis_name":
        capsule = tmp_path / "run_capsule.py"
        capsule.write_text(TEMPLATE_CAPSULE + 'ANALYSIS_NAME = "Bad Name"\n')
        args += ["--from-capsule", str(capsule)]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    if prepare == "non_empty":
        assert [p.name for p in target.iterdir()] == ["keep.txt"]
    elif prepare in (None, "not_capsule", "bad_analysis_name"):
        assert not target.exists()
