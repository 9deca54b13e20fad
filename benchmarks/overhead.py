"""Item 3a: framework overhead per job of ``analysis-wrapper run`` (in-process) over the floor.

Ours: ``analysis_wrapper.cli.main(["run", "--no-dry-run", JOBS])`` in this process, exactly the
``analysis-wrapper run`` code path (register the job files, batched skip check, in-process Dagster runs
of ``--batch-size`` jobs each, results folder + ``outputs.json`` + ``metadata.nd.json``, record in the
embedded SQLite store), with ``DRY_RUN=0``, local results and a clean git work tree as
``CODE_REPOSITORY``. Measured twice: as shipped (batch runs, the default ``--batch-size``) and with
``--batch-size 1`` (one Dagster run per job, as the UI and a backfill do).

The floor: the same analysis functions called in a plain Python loop with the same writes (read the job
file, validate the parameters, result folder, the analysis's files, ``outputs.json`` and
``metadata.nd.json`` written with ``json``). Nothing else.

Both sides run after a warm-up (imports, matplotlib, the page cache of the inputs), so the difference
is the per-job cost of the framework, not the start-up of the process (item 5b runs it as a
subprocess).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks import trivial
from benchmarks.common import (
    Entry,
    RunOptions,
    clean_git_repo,
    compared,
    entry,
    environment,
    maybe_profile,
    stopwatch,
    working_directory,
)
from benchmarks.nwb_data import nwb_files, warm
from benchmarks.records import record

TARGET_S = 0.2
THRESHOLDS_MS = (1.5, 1.0, 2.0, 2.5)

# What a faster Dagster instance could look like (NOT what analysis-wrapper writes today): one event-log
# database for all runs instead of one new SQLite file (with its schema migration) per run, and no
# stdout/stderr capture (two `tail` subprocesses per step).
CANDIDATE_INSTANCE_YAML = """\
telemetry:
  enabled: false
event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {home}/history
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""


# ---- ours: the CLI, in-process ---------------------------------------------------------------------
def cli_run(
    options: RunOptions,
    workdir: Path,
    jobs_dir: Path,
    repo: Path,
    expect_done: int,
    instance_yaml: str | None = None,
    profile_label: str | None = None,
    batch_size: int | None = None,
) -> float:
    """Seconds of one ``analysis-wrapper run --no-dry-run JOBS`` in this process; checks the summary."""
    from analysis_wrapper.cli import main
    from analysis_wrapper.resources.record_store import close_all_stores

    workdir.mkdir(parents=True, exist_ok=True)
    home = workdir / "home"
    if instance_yaml is not None:
        home.mkdir(parents=True, exist_ok=True)
        (home / "dagster.yaml").write_text(instance_yaml.format(home=home))
    env = {
        "DAGSTER_HOME": str(home),
        "RESULTS_ROOT": str(workdir / "results"),
        "DRY_RUN_ROOT": str(workdir / "dry_run"),
        "DRY_RUN": "0",
        "CODE_REPOSITORY": str(repo),
        "ALLOW_DIRTY": None,
        "GIT_COMMIT": None,
        "DOCDB_URI": None,
        "ANALYSIS_BUCKET": None,
        "AWS_ENDPOINT_URL": None,
    }
    out = io.StringIO()
    profiling = maybe_profile(options, profile_label) if profile_label else contextlib.nullcontext()
    with working_directory(workdir), environment(**env), trivial.served():
        try:
            with contextlib.redirect_stdout(out), profiling, stopwatch() as t:
                batching = [] if batch_size is None else ["--batch-size", str(batch_size)]
                code = main(["run", "--no-dry-run", *batching, str(jobs_dir)])
        finally:
            close_all_stores()
    lines = out.getvalue().strip().splitlines()
    summary = next((line for line in reversed(lines) if " job(s): " in line), "(no summary)")
    done = re.search(r" job\(s\): (\d+) done", summary)
    if code != 0 or done is None or int(done.group(1)) != expect_done:
        failures = [line for line in lines if line.startswith(("failed", "REJECTED"))][:3]
        raise RuntimeError(f"analysis-wrapper run: exit {code}: {summary} {' | '.join(failures)}")
    return t[0]


# ---- the floor ---------------------------------------------------------------------------------------
def floor_run(jobs_dir: Path, results_root: Path, analyses: dict[str, Any]) -> float:
    """The same analysis functions in a plain loop with the same writes; returns seconds."""
    logger = logging.getLogger("benchmarks.floor")
    files = sorted(jobs_dir.glob("*.json"))
    with stopwatch() as t:
        for path in files:
            job = json.loads(path.read_text())
            merged = {
                **(job["analysis_code"].get("parameters") or {}),
                **(job["distributed_parameters"] or {}),
            }
            spec = analyses[merged["analysis_name"]]
            params = spec.params.model_validate(merged)
            inputs = job["file_location"] or job["s3_location"]
            validated = params.model_dump(mode="json")
            fp = hashlib.sha256(
                json.dumps([spec.name, inputs, validated, spec.version], sort_keys=True).encode()
            ).hexdigest()
            folder = results_root / fp
            folder.mkdir(parents=True)
            outputs = spec.run(SimpleNamespace(input_paths=[Path(p) for p in inputs]), params, folder, logger)
            outputs_json = outputs.model_dump(mode="json")
            (folder / "outputs.json").write_text(json.dumps(outputs_json, indent=2) + "\n")
            meta = record(fp, spec.name, str(folder), validated, outputs_json)
            (folder / "metadata.nd.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    done = sum(1 for f in results_root.iterdir() if (f / "metadata.nd.json").is_file())
    if done != len(files):
        raise RuntimeError(f"floor: {done} result folders for {len(files)} jobs")
    return t[0]


# ---- jobs --------------------------------------------------------------------------------------------
def isi_jobs(root: Path, n_jobs: int, n_files: int, units: int, spikes: int, log: Any) -> Path:
    """``n_jobs`` isi_violations job files over ``n_files`` cached NWB files (files x thresholds)."""
    paths = nwb_files(n_files, units, spikes, log)
    warm(paths)
    jobs = root / "jobs"
    for j in range(n_jobs):
        params = {
            "analysis_name": "isi_violations",
            "analysis_tag": "benchmark",
            "isi_threshold_ms": THRESHOLDS_MS[(j // n_files) % len(THRESHOLDS_MS)],
        }
        if j >= n_files * len(THRESHOLDS_MS):
            params["isi_violations_cutoff"] = 0.5 + 0.01 * j  # more jobs than files x thresholds
        trivial.write_job(jobs, [paths[j % n_files]], params)
    return jobs


def _analyses() -> dict[str, Any]:
    from analysis_wrapper.analyses import discover_analyses

    return {**discover_analyses(), trivial.NAME: trivial.analysis}


def _warm_up(options: RunOptions, root: Path, repo: Path, isi_job_dir: Path | None) -> None:
    """One unmeasured job each way: imports, first connections, matplotlib's font cache."""
    jobs = trivial.write_trivial_jobs(root / "warm_trivial", 1)
    cli_run(options, root / "warm_cli", jobs, repo, 1)
    floor_run(jobs, _fresh(root / "warm_floor"), _analyses())
    if isi_job_dir is not None:
        one = root / "warm_isi_jobs"
        one.mkdir(parents=True, exist_ok=True)
        shutil.copy(sorted(isi_job_dir.glob("*.json"))[0], one)
        floor_run(one, _fresh(root / "warm_isi_floor"), _analyses())
        cli_run(options, root / "warm_isi_cli", one, repo, 1)


def _fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _overhead_entries(label: str, n: int, cli_s: float, floor_s: float, mode: str) -> list[Entry]:
    overhead = (cli_s - floor_s) / n
    return [
        compared(
            f"{label}: analysis-wrapper run (in-process), {mode}",
            n / cli_s,
            "jobs/s",
            "floor: plain Python loop",
            n / floor_s,
            "value ratio",
        ),
        entry(
            f"{label}: overhead per job over the floor, {mode}",
            overhead,
            "s/job",
            target=f"< {TARGET_S} s/job",
            met=overhead < TARGET_S,
            note=f"run {cli_s:.1f} s vs floor {floor_s:.2f} s for {n} jobs",
        ),
    ]


def _both_modes(
    options: RunOptions, root: Path, jobs: Path, repo: Path, n: int, label: str, floor_s: float, what: str
) -> list[Entry]:
    """``analysis-wrapper run`` as shipped (batch runs) and with one Dagster run per job."""
    from analysis_wrapper.runner import DEFAULT_BATCH_SIZE

    options.log(f"  analysis-wrapper run: {n} {what} jobs, batches of {DEFAULT_BATCH_SIZE}")
    batched_s = cli_run(options, root / "cli", jobs, repo, n, profile_label=f"overhead_{what}_cli")
    options.log(f"  analysis-wrapper run --batch-size 1: {n} {what} jobs, one run each")
    single_s = cli_run(options, root / "cli_single", jobs, repo, n, batch_size=1)
    return [
        *_overhead_entries(label, n, batched_s, floor_s, f"batches of {DEFAULT_BATCH_SIZE} (default)"),
        *_overhead_entries(label, n, single_s, floor_s, "one run per job (--batch-size 1)"),
    ]


# ---- the benchmarks ----------------------------------------------------------------------------------
def run_trivial(options: RunOptions) -> list[Entry]:
    n = options.sizes.trivial_jobs
    root = Path(options.workdir) / "overhead_trivial"
    repo = clean_git_repo(root / "code_repo")
    options.log("  warm-up")
    _warm_up(options, root, repo, None)
    jobs = trivial.write_trivial_jobs(root / "trivial", n)

    options.log(f"  floor: {n} trivial jobs in a plain loop")
    floor_s = floor_run(jobs, _fresh(root / "floor_results"), _analyses())
    label = f"{n} trivial jobs"
    entries = _both_modes(options, root, jobs, repo, n, label, floor_s, "trivial")

    options.log("  analysis-wrapper run again: every job already done")
    with stopwatch() as again:
        cli_run(options, root / "cli", jobs, repo, 0)
    entries.append(entry(f"{label}: second run, every job already done", again[0], "s"))

    m = min(n, options.sizes.candidate_jobs)
    options.log(f"  analysis-wrapper run: {m} trivial jobs, default vs candidate instance config")
    few = root / "trivial_few"
    few.mkdir(exist_ok=True)
    for path in sorted(jobs.glob("*.json"))[:m]:
        shutil.copy(path, few)
    default_s = cli_run(options, root / "cli_default_few", few, repo, m, batch_size=1)
    candidate_s = cli_run(
        options, root / "cli_candidate", few, repo, m, CANDIDATE_INSTANCE_YAML, batch_size=1
    )
    floor_per_job = floor_s / n
    entries.append(
        compared(
            f"{m} trivial jobs, one run per job: overhead per job, candidate instance config",
            candidate_s / m - floor_per_job,
            "s/job",
            "default instance (as the CLI writes it)",
            default_s / m - floor_per_job,
            "time ratio",
            note="consolidated SQLite event log + NoOpComputeLogManager in dagster.yaml (not shipped)",
        )
    )
    return entries


def run_isi(options: RunOptions) -> list[Entry]:
    sizes = options.sizes
    n = sizes.isi_jobs
    root = Path(options.workdir) / "overhead_isi"
    repo = clean_git_repo(root / "code_repo")
    jobs = isi_jobs(root, n, sizes.isi_files, sizes.isi_units, sizes.isi_spikes_per_unit, options.log)
    mb = sum(Path(json.loads(p.read_text())["file_location"][0]).stat().st_size for p in jobs.glob("*.json"))
    options.log("  warm-up")
    _warm_up(options, root, repo, jobs)

    options.log(f"  floor: {n} isi_violations jobs in a plain loop")
    floor_s = floor_run(jobs, _fresh(root / "floor_results"), _analyses())
    per_job = mb / n / 1e6
    label = (
        f"{n} isi_violations jobs ({per_job:.0f} MB NWB each)"
        if per_job >= 10
        else (f"{n} isi_violations jobs ({per_job:.1f} MB NWB each)")
    )
    return _both_modes(options, root, jobs, repo, n, label, floor_s, "isi_violations")
