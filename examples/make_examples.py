"""Write small synthetic NWB files and AIND-format job files for the ``isi_violations`` analysis.

Why: the pipeline needs realistic inputs to demo and test against without access to real data. The
spike trains are Poisson with a 2 ms dead time (clean units have no ISI violations); some units get
extra spikes injected within 1 ms of existing ones, so their ISI violation ratio is clearly
non-zero. Everything comes from ``numpy.random.default_rng(seed)``, so reruns write identical job
files (the NWB files differ only in what pynwb/hdmf stamp, such as object ids).

Usage: ``python examples/make_examples.py [--out DIR] [--jobs N] [--seed S]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SESSION_START = dt.datetime(2026, 1, 15, 10, 0, 0, tzinfo=dt.UTC)
DEAD_TIME_S = 0.002


def write_nwb(
    path: Path,
    spike_trains: Sequence[np.ndarray],
    obs_intervals: Sequence[Sequence[tuple[float, float]]] | None,
    unit_ids: Sequence[int] | None = None,
    session_start_time: dt.datetime = SESSION_START,
) -> Path:
    """Write an NWB file whose units table holds ``spike_trains`` (seconds), one unit per train.

    ``obs_intervals`` (one list of ``(start, end)`` per unit) adds the optional ``obs_intervals``
    column; ``None`` leaves it out. ``unit_ids`` defaults to 0..n-1.
    """
    from pynwb import NWBHDF5IO, NWBFile

    path = Path(path)
    if unit_ids is None:
        unit_ids = list(range(len(spike_trains)))
    if len(unit_ids) != len(spike_trains):
        raise ValueError("unit_ids and spike_trains must have the same length")
    if obs_intervals is not None and len(obs_intervals) != len(spike_trains):
        raise ValueError("obs_intervals and spike_trains must have the same length")
    nwbfile = NWBFile(
        session_description="Synthetic spike-sorted units for the isi_violations example",
        identifier=f"synthetic-{path.stem}",
        session_start_time=session_start_time,
        file_create_date=session_start_time,
    )
    for i, (uid, train) in enumerate(zip(unit_ids, spike_trains, strict=True)):
        kwargs = {}
        if obs_intervals is not None:
            kwargs["obs_intervals"] = np.asarray(obs_intervals[i], dtype=float).reshape(-1, 2)
        nwbfile.add_unit(spike_times=np.asarray(train, dtype=float), id=int(uid), **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), mode="w") as io:
        io.write(nwbfile)
    return path


def poisson_train(rng: np.random.Generator, rate_hz: float, duration_s: float) -> np.ndarray:
    """Poisson spike train with a dead time, so it has no refractory violations of its own."""
    n_expected = int(rate_hz * duration_s * 1.5) + 10
    isis = rng.exponential(1.0 / rate_hz, n_expected) + DEAD_TIME_S
    times = np.cumsum(isis)
    return times[times < duration_s]


def inject_violations(rng: np.random.Generator, train: np.ndarray, fraction: float) -> np.ndarray:
    """Add spikes 0.1-0.9 ms after a random ``fraction`` of existing spikes (contamination)."""
    n_extra = max(1, round(fraction * train.size))
    picks = rng.choice(train.size, size=min(n_extra, train.size), replace=False)
    extra = train[picks] + rng.uniform(0.0001, 0.0009, picks.size)
    return np.sort(np.concatenate([train, extra]))


def make_session(
    rng: np.random.Generator, with_obs_intervals: bool
) -> tuple[list[np.ndarray], list[list[tuple[float, float]]] | None, list[int]]:
    """Random units for one session; with obs_intervals, a gap in the middle is left unobserved."""
    n_units = int(rng.integers(8, 13))
    duration = float(rng.uniform(60.0, 120.0))
    unit_ids = sorted(int(i) for i in rng.choice(np.arange(100, 200), size=n_units, replace=False))
    gap = (0.4 * duration, 0.5 * duration) if with_obs_intervals else None
    trains: list[np.ndarray] = []
    intervals: list[list[tuple[float, float]]] = []
    for _ in range(n_units):
        train = poisson_train(rng, float(rng.uniform(2.0, 20.0)), duration)
        if rng.random() < 0.4:
            train = inject_violations(rng, train, float(rng.uniform(0.005, 0.03)))
        train = train[train < duration]
        if gap is not None:
            train = train[(train < gap[0]) | (train >= gap[1])]
        trains.append(train)
        if gap is not None:
            intervals.append([(0.0, round(gap[0], 6)), (round(gap[1], 6), round(duration, 6))])
    return trains, (intervals if with_obs_intervals else None), unit_ids


def _rng_uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def write_examples(out: Path, n_jobs: int = 3, seed: int = 0) -> list[Path]:
    """Write ``n_jobs`` NWB assets and one job file per asset; return the job file paths.

    Even-numbered sessions have an ``obs_intervals`` column, odd ones do not, so both duration
    rules of the analysis are exercised.
    """
    out = Path(out).resolve()
    rng = np.random.default_rng(seed)
    jobs_dir = out / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    job_paths = []
    for i in range(n_jobs):
        subject_id = str(700001 + i)
        start = SESSION_START + dt.timedelta(days=i)
        asset_name = f"ecephys_{subject_id}_{start:%Y-%m-%d_%H-%M-%S}"
        asset_dir = out / "data" / asset_name
        nwb_path = asset_dir / f"{asset_name}.nwb"
        trains, obs, unit_ids = make_session(rng, with_obs_intervals=(i % 2 == 0))
        write_nwb(nwb_path, trains, obs, unit_ids, session_start_time=start)
        job = {
            "s3_location": [str(asset_dir)],
            "asset_name": [asset_name],
            "docdb_record_id": [_rng_uuid(rng)],
            "file_location": [str(nwb_path)],
            "distributed_parameters": {"isi_threshold_ms": 1.5},
            "group_metadata": None,
            "query": json.dumps({"subject.subject_id": subject_id}),
            "analysis_code": {
                "object_type": "Code",
                "url": "https://github.com/AllenNeuralDynamics/analysis-wrapper",
                "name": "isi_violations",
                "version": "1.0.0",
                "commit_hash": None,
                "container": None,
                "run_script": "code/run",
                "language": "Python",
                "language_version": "3.11",
                "input_data": None,
                "parameters": {
                    "analysis_name": "isi_violations",
                    "analysis_tag": "example",
                    "isi_violations_cutoff": 0.5,
                },
                "core_dependency": None,
            },
        }
        job_path = jobs_dir / f"{_rng_uuid(rng)}.json"
        job_path.write_text(json.dumps(job, indent=2) + "\n")
        job_paths.append(job_path)
    return job_paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--jobs", type=int, default=3, help="number of assets/job files (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    for job_path in write_examples(args.out, args.jobs, args.seed):
        job = json.loads(job_path.read_text())
        print(f"wrote {job['file_location'][0]}")
        print(f"wrote {job_path}")


if __name__ == "__main__":
    main()
