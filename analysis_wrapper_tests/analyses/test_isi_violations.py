"""Tests for the isi_violations analysis, checked against numbers computed independently here."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import random
import types
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from analysis_wrapper.analyses import isi_violations as iv

LOGGER = logging.getLogger("test_isi_violations")


@pytest.fixture(scope="module")
def make_examples() -> types.ModuleType:
    from examples import make_examples as module

    return module


def brute_force(
    spikes: list[float], duration: float, threshold_ms: float, min_isi_ms: float
) -> tuple[float, int]:
    """Hill et al. ratio written out longhand, from an explicit loop over consecutive spike pairs."""
    s = sorted(spikes)
    count = 0
    for a, b in itertools.pairwise(s):
        if b - a < threshold_ms / 1000.0:
            count += 1
    n = len(s)
    if n == 0 or duration <= 0:
        return math.nan, count
    # (count / (2 n (thr - min))) / (n / T)  ==  count * T / (2 n^2 (thr - min))
    ratio = count * duration / (2.0 * n * n * (threshold_ms - min_isi_ms) / 1000.0)
    return ratio, count


def random_train(rng: random.Random, duration: float, n: int, n_close: int) -> list[float]:
    """Unsorted spike times, with ``n_close`` extra spikes placed 0.05-1.9 ms after others."""
    base = [rng.uniform(0.5, duration - 0.5) for _ in range(n)]
    close = [t + rng.uniform(0.00005, 0.0019) for t in rng.sample(base, n_close)]
    train = base + close
    rng.shuffle(train)
    return train


THRESHOLD_MS = 2.0
MIN_ISI_MS = 0.3


@pytest.fixture(scope="module")
def two_files(tmp_path_factory: pytest.TempPathFactory, make_examples: types.ModuleType) -> dict:
    """One file with obs_intervals (ids 5, 17, 42, 99) and one without (ids 3, 8, 1000)."""
    rng = random.Random(1234)
    d = tmp_path_factory.mktemp("nwb")
    obs_trains = [
        random_train(rng, 50.0, 400, 12),
        random_train(rng, 50.0, 150, 0),
        [],
        random_train(rng, 50.0, 800, 3),
    ]
    obs_intervals = [[(0.0, 20.0), (25.0, 50.0)], [(0.0, 50.0)], [(0.0, 50.0)], [(1.0, 49.0)]]
    span_trains = [random_train(rng, 30.0, 300, 20), [7.25], random_train(rng, 30.0, 200, 1)]
    # Force a known file span: earliest spike at 0.2 s in one unit, latest at 31.7 s in another.
    span_trains[0].append(0.2)
    span_trains[2].append(31.7)
    with_obs = make_examples.write_nwb(
        d / "with_obs.nwb", [np.array(t) for t in obs_trains], obs_intervals, [5, 17, 42, 99]
    )
    no_obs = make_examples.write_nwb(d / "no_obs.nwb", [np.array(t) for t in span_trains], None, [3, 8, 1000])
    return {
        "with_obs": (
            with_obs,
            [5, 17, 42, 99],
            obs_trains,
            [sum(e - s for s, e in iv_) for iv_ in obs_intervals],
        ),
        "no_obs": (no_obs, [3, 8, 1000], span_trains, [31.7 - 0.2] * 3),
    }


def expected_rows(
    two_files: dict, threshold_ms: float, min_isi_ms: float
) -> list[tuple[int, float, int, str]]:
    rows = []
    for key in ("with_obs", "no_obs"):
        path, ids, trains, durations = two_files[key]
        for uid, train, duration in zip(ids, trains, durations, strict=True):
            ratio, count = brute_force(train, duration, threshold_ms, min_isi_ms)
            rows.append((uid, ratio, count, path.name))
    return rows


def assert_ratio_equal(actual: float, expected: float) -> None:
    if math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_pure_function_matches_brute_force_and_handles_edge_cases() -> None:
    rng = random.Random(7)
    train = random_train(rng, 10.0, 200, 9)
    ratio, count = iv.isi_violations(train, 10.0, THRESHOLD_MS, MIN_ISI_MS)
    exp_ratio, exp_count = brute_force(train, 10.0, THRESHOLD_MS, MIN_ISI_MS)
    assert count == exp_count >= 9
    assert ratio == pytest.approx(exp_ratio, rel=1e-12)
    # Hand-checked: 4 spikes, ISIs 1 ms, 0.5 s, 1 ms -> 2 violations at 1.5 ms; T=10 s.
    # ratio = 2 * 10 / (2 * 16 * 0.0015) = 416.666...
    assert iv.isi_violations([0.5, 0.001, 0.0, 0.501], 10.0, 1.5, 0.0) == (pytest.approx(20 / 0.048), 2)
    # An ISI exactly at the threshold is not a violation (strict <, as in SpikeInterface).
    assert iv.isi_violations([0.0, 0.002, 5.0], 10.0, 2.0, 0.0)[1] == 0
    assert math.isnan(iv.isi_violations([], 10.0)[0])
    assert iv.isi_violations([], 10.0)[1] == 0
    assert iv.isi_violations([3.0], 10.0) == (0.0, 0)
    zero_dur = iv.isi_violations([1.0, 1.0005], 0.0)
    assert math.isnan(zero_dur[0]) and zero_dur[1] == 1


@pytest.mark.parametrize(("threshold_ms", "min_isi_ms"), [(1.5, 0.0), (THRESHOLD_MS, MIN_ISI_MS)])
def test_run_matches_independent_computation(
    two_files: dict, tmp_path: Path, threshold_ms: float, min_isi_ms: float
) -> None:
    params = iv.IsiViolationsParams(
        isi_threshold_ms=threshold_ms, min_isi_ms=min_isi_ms, isi_violations_cutoff=0.3
    )
    job = types.SimpleNamespace(input_paths=[two_files["with_obs"][0], two_files["no_obs"][0]])
    outputs = iv.analysis.run(job, params, tmp_path, LOGGER)

    expected = expected_rows(two_files, threshold_ms, min_isi_ms)
    with open(tmp_path / "isi_violations.csv", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        rows = list(reader)
    assert header == ["unit_id", "isi_violations_ratio", "isi_violations_count", "nwb_file"]
    assert len(rows) == len(expected) == 7
    for row, (uid, ratio, count, name) in zip(rows, expected, strict=True):
        assert int(row[0]) == uid
        assert_ratio_equal(float(row[1]), ratio)
        assert int(row[2]) == count
        assert row[3] == name
    # The unit without spikes (id 42) has a NaN ratio; the single-spike unit (id 8) has ratio 0.
    by_id = {int(r[0]): r for r in rows}
    assert math.isnan(float(by_id[42][1])) and by_id[42][2] == "0"
    assert float(by_id[8][1]) == 0.0

    finite = [r for _, r, _, _ in expected if not math.isnan(r)]
    n_violating = sum(1 for r in finite if r > 0.3)
    assert 0 < n_violating < len(finite), "test data should have violating and clean units"
    assert outputs.n_files == 2
    assert outputs.n_units == 7
    assert outputs.n_units_with_spikes == 6
    assert outputs.n_violating_units == n_violating
    assert outputs.fraction_violating == pytest.approx(n_violating / len(finite))
    assert outputs.median_isi_violations_ratio == pytest.approx(float(np.median(finite)))
    assert outputs.total_isi_violations_count == sum(c for _, _, c, _ in expected)

    png = (tmp_path / "isi_violations.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 5000
    assert iv.analysis.figure == "isi_violations.png"


def test_threshold_changes_results(two_files: dict) -> None:
    """Guards against parameters being ignored: a wider window must count at least as many ISIs."""
    path = two_files["with_obs"][0]
    narrow = iv.compute_file_isi_violations(path, 0.5, 0.0)
    wide = iv.compute_file_isi_violations(path, 2.0, 0.0)
    assert sum(r.isi_violations_count for r in wide) > sum(r.isi_violations_count for r in narrow)


def test_cutoff_drives_violating_count(two_files: dict, tmp_path: Path) -> None:
    job = types.SimpleNamespace(input_paths=[two_files["with_obs"][0]])
    lax = iv.run(job, iv.IsiViolationsParams(isi_violations_cutoff=1e9), tmp_path, LOGGER)
    strict = iv.run(job, iv.IsiViolationsParams(isi_violations_cutoff=0.0), tmp_path, LOGGER)
    assert lax.n_violating_units == 0 and lax.fraction_violating == 0.0
    # With cutoff 0, exactly the units with at least one violation (finite ratio > 0) count.
    expected = sum(
        1 for uid, r, c, _ in expected_rows(two_files, 1.5, 0.0)[:4] if not math.isnan(r) and c > 0
    )
    assert strict.n_violating_units == expected > 0


def test_zero_duration_gives_nan_and_warning(
    make_examples: types.ModuleType, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = make_examples.write_nwb(tmp_path / "zero.nwb", [np.array([2.0, 2.0])], None, [9])
    with caplog.at_level(logging.WARNING, logger=LOGGER.name):
        outputs = iv.run(
            types.SimpleNamespace(input_paths=[path]), iv.IsiViolationsParams(), tmp_path, LOGGER
        )
    assert outputs.n_units == 1 and outputs.n_units_with_spikes == 1
    assert outputs.median_isi_violations_ratio is None and outputs.fraction_violating == 0.0
    assert outputs.total_isi_violations_count == 1
    assert any("zero duration" in rec.message for rec in caplog.records)
    assert (tmp_path / "isi_violations.png").read_bytes()[:4] == b"\x89PNG"


def test_missing_units_table_names_the_file(tmp_path: Path) -> None:
    import datetime as dt

    from pynwb import NWBHDF5IO, NWBFile

    path = tmp_path / "no_units_here.nwb"
    nwbfile = NWBFile("no units", "id-no-units", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    with NWBHDF5IO(str(path), mode="w") as io:
        io.write(nwbfile)
    with pytest.raises(ValueError, match=r"no_units_here\.nwb.*no units table"):
        iv.run(types.SimpleNamespace(input_paths=[path]), iv.IsiViolationsParams(), tmp_path, LOGGER)


def test_params_validation() -> None:
    p = iv.IsiViolationsParams()
    assert (p.analysis_name, p.analysis_tag, p.isi_threshold_ms, p.min_isi_ms, p.isi_violations_cutoff) == (
        "isi_violations",
        None,
        1.5,
        0.0,
        0.5,
    )
    for bad in ({"min_isi_ms": 1.5}, {"min_isi_ms": 2.0, "isi_threshold_ms": 1.0}):
        with pytest.raises(ValidationError, match="min_isi_ms"):
            iv.IsiViolationsParams(**bad)
    with pytest.raises(ValidationError) as exc:
        iv.IsiViolationsParams(isi_violations_cutoff=-0.1)
    assert exc.value.errors()[0]["loc"] == ("isi_violations_cutoff",)
    with pytest.raises(ValidationError) as exc:
        iv.IsiViolationsParams(isi_threshold_ms=0)
    assert exc.value.errors()[0]["loc"] == ("isi_threshold_ms",)
    for model in (iv.IsiViolationsParams, iv.IsiViolationsOutputs):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} lacks a description"


def test_analysis_spec() -> None:
    a = iv.analysis
    assert (a.name, a.version, a.figure) == ("isi_violations", "1.0.0", "isi_violations.png")
    assert a.params is iv.IsiViolationsParams and a.outputs is iv.IsiViolationsOutputs


def test_example_generator_is_deterministic(make_examples: types.ModuleType, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    jobs_a = make_examples.write_examples(a, n_jobs=2, seed=0)
    jobs_b = make_examples.write_examples(b, n_jobs=2, seed=0)
    assert [p.name for p in jobs_a] == [p.name for p in jobs_b]
    assert len(jobs_a) == 2 and all(p.parent == a.resolve() / "jobs" for p in jobs_a)
    # Paths are absolute, so the files differ only by the output root.
    for pa, pb in zip(jobs_a, jobs_b, strict=True):
        text_a = pa.read_text().replace(str(a.resolve()), "<OUT>")
        text_b = pb.read_text().replace(str(b.resolve()), "<OUT>")
        assert text_a == text_b
    # Rerunning into the same folder overwrites with byte-identical job files.
    before = {p.name: p.read_bytes() for p in jobs_a}
    again = make_examples.write_examples(a, n_jobs=2, seed=0)
    assert {p.name: p.read_bytes() for p in again} == before
    assert sorted(p.name for p in (a / "jobs").iterdir()) == sorted(before)

    with_obs_seen = set()
    for p in jobs_a:
        job = json.loads(p.read_text())
        nwb = Path(job["file_location"][0])
        assert nwb.is_absolute() and nwb.is_file()
        assert Path(job["s3_location"][0]) == nwb.parent
        assert job["asset_name"] == [nwb.stem] and nwb.stem.startswith("ecephys_")
        assert job["analysis_code"]["name"] == "isi_violations"
        results = iv.compute_file_isi_violations(nwb)
        assert 8 <= len(results) <= 12
        from pynwb import NWBHDF5IO

        with NWBHDF5IO(str(nwb), mode="r") as io:
            with_obs_seen.add("obs_intervals" in io.read().units.colnames)
        iv.IsiViolationsParams.model_validate(
            {**job["analysis_code"]["parameters"], **job["distributed_parameters"]}
        )
    assert with_obs_seen == {True, False}
    assert make_examples.write_examples(tmp_path / "c", n_jobs=2, seed=1)[0].name != jobs_a[0].name


def test_summary_rows_are_the_units_of_the_job(tmp_path: Path) -> None:
    results = [
        iv.UnitIsiViolations(1, 0.25, 3, 100, 10.0, "a.nwb"),
        iv.UnitIsiViolations(2, math.nan, 0, 0, 10.0, "a.nwb"),
    ]
    iv.write_csv(results, tmp_path / iv.CSV_NAME)
    rows = iv.summary_rows({}, lambda name: (tmp_path / name).read_bytes())
    assert [r["unit_id"] for r in rows] == [1, 2] and rows[0]["isi_violations_ratio"] == 0.25
    assert math.isnan(rows[1]["isi_violations_ratio"]) and rows[0]["nwb_file"] == "a.nwb"
    assert iv.analysis.summary_rows is iv.summary_rows and iv.analysis.summary_figure is iv.summary_figure


def test_summary_figure_keeps_parameter_sets_apart_and_labels_each_cutoff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cutoffs (and two versions) in one summary: one colour per version and parameter set, named
    in the legend; one cutoff line per set, labelled with its value, in its set's colour."""
    import pandas as pd

    from analysis_wrapper.summary import figures
    from analysis_wrapper.summary.table import parameter_set

    sets = [("1.0.0", 0.5), ("1.0.0", 0.9), ("2.0.0", 0.5)]
    jobs = pd.DataFrame(
        [
            {
                "partition_key": f"job{i}",
                "session": f"session{i}",
                "analysis_version": version,
                "parameter_set": parameter_set({"isi_violations_cutoff": cutoff}),
                "parameters": json.dumps({"isi_violations_cutoff": cutoff}),
                "param.isi_violations_cutoff": cutoff,
                "out.fraction_violating": 0.1 * (i + 1),
            }
            for i, (version, cutoff) in enumerate(sets)
        ]
    )
    units = pd.DataFrame(
        [
            {
                **job[["partition_key", "analysis_version", "parameter_set"]].to_dict(),
                "isi_violations_ratio": r,
            }
            for _, job in jobs.iterrows()
            for r in (0.1, 0.4, 0.7, 1.2, math.nan)
        ]
    )
    drawn = []
    new_figure = figures.new_figure
    monkeypatch.setattr(figures, "new_figure", lambda *size: drawn.append(new_figure(*size)) or drawn[-1])
    iv.summary_figure(jobs, units, tmp_path / "summary.png")
    assert (tmp_path / "summary.png").read_bytes().startswith(b"\x89PNG")
    (figure,) = drawn
    left, right = figure.axes
    named = [t.get_text() for t in left.get_legend().get_texts()]
    assert len(named) == 3 and sum("isi_violations_cutoff=0.9" in n for n in named) == 1
    assert {n.split()[0] for n in named} == {"v1.0.0", "v2.0.0"}
    cutoffs = [t.get_text() for t in right.get_legend().get_texts()]
    assert sorted(c.split(" (")[0] for c in cutoffs) == ["cutoff 0.5", "cutoff 0.5", "cutoff 0.9"]
    lines = [line for line in right.get_lines() if line.get_linestyle() == "--"]
    assert len({line.get_color() for line in lines}) == 3  # two 0.5 lines: told apart by their set's colour
    assert [len(p.get_facecolor()) for p in left.patches] and len(
        {p.get_facecolor() for p in left.patches}
    ) == 3
