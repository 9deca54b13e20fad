"""A team's own project (issue 19, item 1): ``analysis_wrapper`` used as a library.

Two tiny team packages are written in ``tmp_path`` and *installed* there: each has a ``*.dist-info`` folder
with an ``entry_points.txt``, which is all ``importlib.metadata`` needs to count it as an installed
distribution once the folder is on the import path. ``team_alpha`` declares its analysis as a module,
``team_beta`` as ``module:attribute``. Each has its own ``definitions.py`` calling
``build_definitions(analyses=[analysis])``. Checked: discovery without any setting, its errors, the CLI
finding an installed analysis, a team's location serving its own analyses only, and both teams'
locations in one Dagster deployment (one workspace, one DAGSTER_HOME, one record database).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from analysis_wrapper.analyses import (
    AnalysisDiscoveryError,
    analysis_of_reference,
    discover_analyses,
    installed_analyses,
)
from analysis_wrapper.resources.record_store import close_all_stores
from analysis_wrapper_tests.environment import scrub_settings, scrubbed_environ
from analysis_wrapper_tests.harness import write_job
from analysis_wrapper_tests.sample_analyses import size_analysis_source

BIN = Path(sys.executable).parent
TEAM_DEFINITIONS = """
from analysis_wrapper import build_definitions
from {package}.sizes import analysis

defs = build_definitions(analyses=[analysis])
"""
# package -> (its analysis's name, the entry point's value)
TEAMS = {
    "team_alpha": ("alpha_sizes", "team_alpha.sizes"),
    "team_beta": ("beta_sizes", "team_beta.sizes:analysis"),
}


def install(site: Path, distribution: str, entry_points: dict[str, str]) -> None:
    """An installed distribution in ``site``: its dist-info with the given ``analysis_wrapper.analyses``
    entry points (what ``pip install`` writes from ``[project.entry-points."analysis_wrapper.analyses"]``)."""
    info = site / f"{distribution}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[analysis_wrapper.analyses]\n{lines}")


def team_package(site: Path, package: str, name: str, value: str) -> None:
    """A team's package: its analysis module (``sizes``), its code location (``definitions``), installed."""
    (site / package).mkdir(parents=True)
    (site / package / "__init__.py").write_text("")
    (site / package / "sizes.py").write_text(size_analysis_source(name))
    (site / package / "definitions.py").write_text(TEAM_DEFINITIONS.format(package=package))
    install(site, package, {name: value})


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty site folder on this process's import path (and on PYTHONPATH, for subprocesses)."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    yield site
    for module in [m for m in sys.modules if m.split(".")[0] in {*TEAMS, "team_gamma"}]:
        del sys.modules[module]


@pytest.fixture
def teams(site: Path) -> Path:
    for package, (name, value) in TEAMS.items():
        team_package(site, package, name, value)
    return site


def test_without_installed_analyses_the_shipped_example_is_served() -> None:
    assert "isi_violations" in discover_analyses()
    assert installed_analyses() == {}


def test_installed_packages_are_found_without_a_setting_and_the_example_steps_aside(teams: Path) -> None:
    found = discover_analyses()
    assert sorted(found) == ["alpha_sizes", "beta_sizes"]  # a module, and module:attribute
    assert found["alpha_sizes"] is sys.modules["team_alpha.sizes"].analysis
    assert installed_analyses() == found
    # ANALYSIS_MODULES still adds modules ad hoc, the example among them on purpose
    with_example = discover_analyses(["analysis_wrapper.analyses.isi_violations"])
    assert sorted(with_example) == ["alpha_sizes", "beta_sizes", "isi_violations"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("team_nowhere.sizes", r"entry point broken = 'team_nowhere.sizes' of team_bad cannot be loaded: "),
        ("json", r"entry point broken = 'json' of team_bad: module 'json' gives no analysis"),
        ("json:dumps", r"entry point broken = 'json:dumps' of team_bad names function .*, not an Analysis"),
    ],
)
def test_an_entry_point_that_gives_no_analysis_is_an_error_naming_it(
    site: Path, value: str, message: str
) -> None:
    install(site, "team_bad", {"broken": value})
    with pytest.raises(AnalysisDiscoveryError, match=message):
        discover_analyses()


def test_a_reference_in_configuration_resolves_as_an_entry_point_value(teams: Path) -> None:
    assert analysis_of_reference("team_beta.sizes:analysis").name == "beta_sizes"
    with pytest.raises(AnalysisDiscoveryError, match="analysis 'json': module 'json' gives no analysis"):
        analysis_of_reference("json")


def test_two_analyses_with_one_name_are_an_error_naming_both_sources(teams: Path) -> None:
    (teams / "team_gamma").mkdir()
    (teams / "team_gamma" / "__init__.py").write_text(size_analysis_source("alpha_sizes"))
    with pytest.raises(AnalysisDiscoveryError, match="module team_gamma") as raised:
        discover_analyses(["team_gamma"])
    assert "'alpha_sizes'" in str(raised.value) and "team_alpha.sizes' of team_alpha" in str(raised.value)
    install(teams, "team_gamma", {"alpha_sizes": "team_gamma"})
    with pytest.raises(AnalysisDiscoveryError, match=r"of team_alpha and entry point .* of team_gamma"):
        discover_analyses()


def test_a_team_location_serves_its_own_analyses_only(
    teams: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scrub_settings(monkeypatch)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    from team_alpha.definitions import defs  # type: ignore[import-not-found]

    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {"alpha_sizes_result", "alpha_sizes_summary", "alpha_sizes_dispatches"}
    close_all_stores()


def _env(work: Path, **settings: str) -> dict[str, str]:
    return {
        **scrubbed_environ(),
        "PYTHONPATH": os.environ["PYTHONPATH"],
        "DAGSTER_HOME": str(work / "home"),
        **settings,
    }


def _run(args: list[str], work: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=work, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_cli_runs_an_installed_analysis(teams: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "input.bin").write_bytes(b"x" * 10)
    job = write_job(work / "jobs", [work / "input.bin"], analysis="beta_sizes", scale=2.0)
    env = _env(work)
    done = _run([str(BIN / "analysis-wrapper"), "run", "--analysis", "beta_sizes", str(job)], work, env)
    assert done.returncode == 0 and "1 dry run" in done.stdout, done.stdout + done.stderr
    (size,) = (work / "analysis_results_dry_run").rglob("size.txt")
    assert size.read_text() == "20.0"
    refused = _run(
        [str(BIN / "analysis-wrapper"), "run", "--analysis", "isi_violations", str(job)], work, env
    )
    assert refused.returncode != 0
    assert "'isi_violations' is not served here (known: alpha_sizes, beta_sizes)" in refused.stderr


WORKSPACE = """
load_from:
  - python_module:
      module_name: team_alpha.definitions
      location_name: team_alpha
  - python_module:
      module_name: team_beta.definitions
      location_name: team_beta
"""
ASSETS_QUERY = """{ repositoriesOrError { ... on RepositoryConnection { nodes {
    location { name } assetNodes { assetKey { path } } } } } }"""


@pytest.mark.slow
def test_two_teams_locations_run_in_one_deployment(teams: Path, tmp_path: Path) -> None:
    """One workspace with both teams' locations, one DAGSTER_HOME and one record database: both load
    together, each with its own assets only, and each materializes its own job from its own location."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "workspace.yaml").write_text(WORKSPACE)
    (work / "input.bin").write_bytes(b"x" * 10)
    env = _env(work, DRY_RUN="0", ALLOW_DIRTY="1")
    keys = {}
    for team in ("alpha", "beta"):  # the CLI makes the instance (DAGSTER_HOME) on its first start
        job = write_job(work / "jobs", [work / "input.bin"], analysis=f"{team}_sizes")
        submitted = _run([str(BIN / "analysis-wrapper"), "submit", str(job)], work, env)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        keys[team] = submitted.stdout.split(f"registered {team}_sizes ")[1].split()[0]

    valid = _run([str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], work, env)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    graphql = [str(BIN / "dagster-graphql"), "-w", "workspace.yaml", "-t", ASSETS_QUERY]
    loaded = _run(graphql, work, env)
    assert loaded.returncode == 0, loaded.stderr
    (answer,) = [line for line in loaded.stdout.splitlines() if line.startswith('{"data"')]
    nodes = json.loads(answer)["data"]["repositoriesOrError"]["nodes"]
    assets = {
        n["location"]["name"]: {"/".join(a["assetKey"]["path"]) for a in n["assetNodes"]} for n in nodes
    }
    assert assets == {
        f"team_{team}": {f"{team}_sizes_result", f"{team}_sizes_summary", f"{team}_sizes_dispatches"}
        for team in ("alpha", "beta")
    }

    for team, key in keys.items():
        materialize = ["asset", "materialize", "-m", f"team_{team}.definitions", "--partition", key]
        done = _run([str(BIN / "dagster"), *materialize, "--select", f"{team}_sizes_result"], work, env)
        assert done.returncode == 0, done.stdout + done.stderr
    results = _run([str(BIN / "analysis-wrapper"), "results", "--json"], work, env)
    assert results.returncode == 0, results.stderr
    recorded = sorted(r["analysis_wrapper"]["analysis"] for r in json.loads(results.stdout))
    assert recorded == ["alpha_sizes", "beta_sizes"]  # one record database, a record of each team's job
    assert [p.name for p in (work / "home").glob("*.sqlite")] == ["analysis_records.sqlite"]


DG_PYPROJECT = """
[project]
name = "team_gamma"
version = "0.1"

[tool.dg]
directory_type = "project"

[tool.dg.project]
root_module = "team_gamma"
"""
DG_DEFINITIONS = """
from pathlib import Path

import dagster as dg

defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
"""
DEFS_YAML = """
type: analysis_wrapper.component.AnalysesComponent
attributes:
  analyses: [team_alpha.sizes, "team_beta.sizes:analysis"]
"""


def test_a_dg_project_serves_its_analyses_through_the_component(
    teams: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project in the ``create-dagster`` layout: ``defs/analyses/defs.yaml`` names the component, and
    ``definitions.py`` loads the ``defs`` folder."""
    scrub_settings(monkeypatch)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    project = tmp_path / "gamma"
    (project / "team_gamma" / "defs" / "analyses").mkdir(parents=True)
    (project / "pyproject.toml").write_text(DG_PYPROJECT)
    for init in ("team_gamma", "team_gamma/defs"):
        (project / init / "__init__.py").write_text("")
    (project / "team_gamma" / "defs" / "analyses" / "defs.yaml").write_text(DEFS_YAML)
    (project / "team_gamma" / "definitions.py").write_text(DG_DEFINITIONS)
    monkeypatch.syspath_prepend(str(project))

    from team_gamma.definitions import defs  # type: ignore[import-not-found]

    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys == {f"{n}_sizes_{a}" for n in ("alpha", "beta") for a in ("result", "summary", "dispatches")}
    assert defs.resolve_job_def("beta_sizes_job").partitions_def is not None  # dynamic, one per job
    registered = entry_points(group="dagster_dg_cli.registry_modules")  # what `dg list components` reads
    assert "analysis_wrapper.component" in {e.value for e in registered}
    close_all_stores()
