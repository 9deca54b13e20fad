"""ISI-violation quality metric for spike-sorted units in NWB files.

A unit whose spikes come closer together than the refractory period of a neuron allows is
contaminated by spikes of other neurons (or by noise). Hill, Mehta & Kleinfeld (2011) turn the
number of such refractory-period violations into a contamination estimate; this module computes it
in the form SpikeInterface's ``compute_isi_violations`` uses, so the numbers are comparable with
those of the AIND capsules:

* ``isi_violations_count``: the number of inter-spike intervals shorter than ``isi_threshold_ms``;
* ``isi_violations_ratio``: the rate of violations relative to what two independent Poisson
  processes firing at the unit's rate would give, i.e.
  ``(count / (2 * n * (threshold - min_isi))) / (n / duration)``.

The pure functions (:func:`isi_violations`, :func:`compute_file_isi_violations`,
:func:`summarize`) do the science; :func:`run` only wires them to the job's files and writes the
CSV table and the figure. Across jobs, :func:`summary_rows` and :func:`summary_figure` make this
analysis's part of ``isi_violations_summary``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, Field, ValidationInfo, field_validator

from analysis_wrapper.analysis import Analysis

if TYPE_CHECKING:
    import pandas as pd

    from analysis_wrapper.job_file import AnalysisJob

CSV_NAME = "isi_violations.csv"
FIGURE_NAME = "isi_violations.png"
CSV_COLUMNS = ("unit_id", "isi_violations_ratio", "isi_violations_count", "nwb_file")


class IsiViolationsParams(BaseModel):
    """Parameters of the ISI-violation metric (names as in the AIND capsule)."""

    analysis_name: str = Field(
        "isi_violations", description="Name of the analysis, recorded with the results."
    )
    analysis_tag: str | None = Field(
        None, description="Free-form tag to group runs of this analysis (e.g. a campaign name)."
    )
    isi_threshold_ms: float = Field(
        1.5,
        gt=0,
        description=(
            "Refractory-period threshold in milliseconds: inter-spike intervals shorter than this "
            "count as violations."
        ),
    )
    min_isi_ms: float = Field(
        0.0,
        ge=0,
        description=(
            "Minimum possible inter-spike interval in milliseconds (e.g. the censored period of the "
            "spike sorter); it shortens the window in which violations can occur. Must be smaller "
            "than isi_threshold_ms."
        ),
    )
    isi_violations_cutoff: float = Field(
        0.5,
        ge=0,
        description="Units whose isi_violations_ratio exceeds this value count as violating.",
    )

    @field_validator("min_isi_ms")
    @classmethod
    def _min_isi_below_threshold(cls, value: float, info: ValidationInfo) -> float:
        # A window of zero or negative length makes the ratio meaningless (division by zero).
        threshold = info.data.get("isi_threshold_ms")
        if threshold is not None and value >= threshold:
            raise ValueError(f"min_isi_ms ({value}) must be smaller than isi_threshold_ms ({threshold})")
        return value


class IsiViolationsOutputs(BaseModel):
    """Small summary of a job's ISI violations, stored in the provenance record."""

    n_files: int = Field(description="Number of NWB files analysed.")
    n_units: int = Field(description="Number of units across all files.")
    n_units_with_spikes: int = Field(description="Number of units with at least one spike.")
    n_violating_units: int = Field(
        description="Number of units whose isi_violations_ratio exceeds isi_violations_cutoff."
    )
    fraction_violating: float = Field(
        description=(
            "n_violating_units divided by the number of units with a finite ratio (0 if there is none)."
        )
    )
    median_isi_violations_ratio: float | None = Field(
        description="Median of the finite isi_violations_ratio values (None if there is none)."
    )
    total_isi_violations_count: int = Field(
        description="Sum of isi_violations_count (ISIs below the threshold) over all units."
    )


@dataclass(frozen=True)
class UnitIsiViolations:
    """The metric for one unit, with where it came from (one row of the CSV)."""

    unit_id: int
    isi_violations_ratio: float
    isi_violations_count: int
    num_spikes: int
    total_duration_s: float
    nwb_file: str


def isi_violations(
    spike_train_s: Sequence[float] | np.ndarray,
    total_duration_s: float,
    isi_threshold_ms: float = 1.5,
    min_isi_ms: float = 0.0,
) -> tuple[float, int]:
    """Return ``(isi_violations_ratio, isi_violations_count)`` for one spike train in seconds.

    Follows SpikeInterface's ``compute_isi_violations``. The ratio is NaN when the unit has no
    spikes or the duration is not positive (there is no rate to compare against); the count is
    still returned. Spike times need not be sorted.
    """
    if min_isi_ms >= isi_threshold_ms:
        raise ValueError(
            f"min_isi_ms ({min_isi_ms}) must be smaller than isi_threshold_ms ({isi_threshold_ms})"
        )
    isi_threshold_s = isi_threshold_ms / 1000.0
    min_isi_s = min_isi_ms / 1000.0
    spikes = np.sort(np.asarray(spike_train_s, dtype=float).ravel())
    num_spikes = int(spikes.size)
    num_violations = int(np.count_nonzero(np.diff(spikes) < isi_threshold_s))
    if num_spikes == 0 or not (total_duration_s > 0) or not math.isfinite(total_duration_s):
        return math.nan, num_violations
    violation_time = 2 * num_spikes * (isi_threshold_s - min_isi_s)
    total_rate = num_spikes / total_duration_s
    violation_rate = num_violations / violation_time
    return float(violation_rate / total_rate), num_violations


def _obs_duration_s(intervals: np.ndarray, nwb_name: str, unit_id: int) -> float:
    """Total observed time of a unit: the sum of its ``obs_intervals`` lengths."""
    intervals = np.asarray(intervals, dtype=float).reshape(-1, 2)
    lengths = intervals[:, 1] - intervals[:, 0]
    if np.any(lengths < 0):
        raise ValueError(
            f"{nwb_name}: unit {unit_id} has an obs_intervals entry whose end precedes its start"
        )
    return float(lengths.sum())


def compute_file_isi_violations(
    nwb_path: Path,
    isi_threshold_ms: float = 1.5,
    min_isi_ms: float = 0.0,
    logger: logging.Logger | None = None,
) -> list[UnitIsiViolations]:
    """Compute the metric for every unit of one NWB file.

    A unit's duration is the sum of its ``obs_intervals`` when the units table has that column,
    otherwise the span from the file's earliest to its latest spike (all units share it), which is
    the best estimate of the recording length available from the units table alone.
    """
    from pynwb import NWBHDF5IO  # imported here: pynwb is slow to import and only needed at run time

    nwb_path = Path(nwb_path)
    log = logger or logging.getLogger(__name__)
    with NWBHDF5IO(str(nwb_path), mode="r") as io:
        nwbfile = io.read()
        units = nwbfile.units
        if units is None:
            raise ValueError(f"{nwb_path.name}: NWB file has no units table ({nwb_path})")
        if "spike_times" not in units.colnames:
            raise ValueError(f"{nwb_path.name}: units table has no spike_times column ({nwb_path})")
        unit_ids = [int(i) for i in units.id[:]]
        trains = [np.asarray(units["spike_times"][i], dtype=float) for i in range(len(unit_ids))]
        obs: list[np.ndarray] | None = None
        if "obs_intervals" in units.colnames:
            obs = [np.asarray(units["obs_intervals"][i], dtype=float) for i in range(len(unit_ids))]

    if obs is not None:
        durations = [_obs_duration_s(o, nwb_path.name, uid) for o, uid in zip(obs, unit_ids, strict=True)]
    else:
        non_empty = [t for t in trains if t.size]
        span = float(max(t.max() for t in non_empty) - min(t.min() for t in non_empty)) if non_empty else 0.0
        durations = [span] * len(unit_ids)

    results = []
    for uid, train, duration in zip(unit_ids, trains, durations, strict=True):
        if train.size and not duration > 0:
            source = "obs_intervals" if obs is not None else "spike-time span of the file"
            log.warning(
                "%s: unit %d has %d spikes but zero duration (%s); its ISI violation ratio is NaN",
                nwb_path.name,
                uid,
                train.size,
                source,
            )
        ratio, count = isi_violations(train, duration, isi_threshold_ms, min_isi_ms)
        results.append(
            UnitIsiViolations(
                unit_id=uid,
                isi_violations_ratio=ratio,
                isi_violations_count=count,
                num_spikes=int(train.size),
                total_duration_s=duration,
                nwb_file=nwb_path.name,
            )
        )
    return results


def summarize(results: Sequence[UnitIsiViolations], cutoff: float, n_files: int) -> IsiViolationsOutputs:
    """Reduce per-unit results to the job's Outputs (NaN ratios are excluded from the fractions)."""
    finite = np.array([r.isi_violations_ratio for r in results if math.isfinite(r.isi_violations_ratio)])
    n_violating = int(np.count_nonzero(finite > cutoff))
    return IsiViolationsOutputs(
        n_files=n_files,
        n_units=len(results),
        n_units_with_spikes=sum(1 for r in results if r.num_spikes > 0),
        n_violating_units=n_violating,
        fraction_violating=float(n_violating / finite.size) if finite.size else 0.0,
        median_isi_violations_ratio=float(np.median(finite)) if finite.size else None,
        total_isi_violations_count=sum(r.isi_violations_count for r in results),
    )


def write_csv(results: Sequence[UnitIsiViolations], path: Path) -> None:
    """Write one row per unit; NaN ratios are written as ``nan`` (``float()`` reads them back)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            writer.writerow([r.unit_id, repr(r.isi_violations_ratio), r.isi_violations_count, r.nwb_file])


def write_figure(
    results: Sequence[UnitIsiViolations], outputs: IsiViolationsOutputs, cutoff: float, path: Path
) -> None:
    """Histogram of finite ratios with the cutoff marked.

    Uses ``Figure`` with the Agg canvas directly, so no global pyplot state or backend is touched
    (the run function may execute inside a long-lived Dagster process).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finite = [r.isi_violations_ratio for r in results if math.isfinite(r.isi_violations_ratio)]
    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if finite:
        ax.hist(finite, bins=max(5, min(40, len(finite))), color="tab:blue", edgecolor="white")
    else:
        ax.text(0.5, 0.5, "no unit with a finite ratio", ha="center", va="center", transform=ax.transAxes)
    ax.axvline(cutoff, color="tab:red", linestyle="--", label=f"cutoff = {cutoff:g}")
    ax.set_xlabel("ISI violations ratio")
    ax.set_ylabel("units")
    ax.set_title(
        f"{outputs.n_violating_units} of {len(finite)} units above cutoff "
        f"({outputs.n_units} units, {outputs.n_files} files)"
    )
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def run(
    job: AnalysisJob, params: IsiViolationsParams, results_dir: Path, logger: logging.Logger
) -> IsiViolationsOutputs:
    """Compute the metric for every NWB file of the job; write the CSV and the figure."""
    results_dir = Path(results_dir)
    all_results: list[UnitIsiViolations] = []
    for path in job.input_paths:
        file_results = compute_file_isi_violations(path, params.isi_threshold_ms, params.min_isi_ms, logger)
        s = summarize(file_results, params.isi_violations_cutoff, 1)
        median = "n/a" if s.median_isi_violations_ratio is None else f"{s.median_isi_violations_ratio:.3g}"
        logger.info(
            "%s: %d units (%d with spikes), %d violating (ratio > %g), median ratio %s, %d violations",
            Path(path).name,
            s.n_units,
            s.n_units_with_spikes,
            s.n_violating_units,
            params.isi_violations_cutoff,
            median,
            s.total_isi_violations_count,
        )
        all_results.extend(file_results)

    outputs = summarize(all_results, params.isi_violations_cutoff, len(job.input_paths))
    write_csv(all_results, results_dir / CSV_NAME)
    write_figure(all_results, outputs, params.isi_violations_cutoff, results_dir / FIGURE_NAME)
    return outputs


def summary_rows(record: dict[str, Any], read: Callable[[str], bytes]) -> list[dict[str, Any]]:
    """One row per unit of a job (its CSV): the per-unit ratios are not in the record."""
    import pandas as pd

    rows: list[dict[str, Any]] = pd.read_csv(io.BytesIO(read(CSV_NAME))).to_dict("records")
    return rows


def summary_figure(jobs: pd.DataFrame, units: pd.DataFrame | None, path: Path) -> None:
    """Left, the fraction of violating units per session; right, the per-unit ratios of every session
    with each cutoff marked. One colour per version and parameter set (the fraction depends on the
    cutoff, the ratios on the thresholds), named in the legend; a cutoff line is labelled with its value."""
    from matplotlib.patches import Patch

    from analysis_wrapper.summary.figures import group_labels, groups_of, new_figure

    labels = group_labels(jobs)
    colour = {key: f"C{i}" for i, key in enumerate(labels)}
    figure = new_figure(12, 4.5)
    left, right = figure.subplots(1, 2)
    ordered = jobs.sort_values("out.fraction_violating", ascending=False)
    keys = list(
        zip(ordered["analysis_version"].astype(str), ordered["parameter_set"].astype(str), strict=True)
    )
    names = [s or k for s, k in zip(ordered["session"], ordered["partition_key"], strict=True)]
    left.barh(
        range(len(ordered)),
        ordered["out.fraction_violating"].astype(float),
        color=[colour.get(k, "grey") for k in keys],
    )
    left.set_yticks(range(len(ordered)), labels=names if len(ordered) <= 30 else [""] * len(ordered))
    left.invert_yaxis()
    left.set_xlabel("fraction of units violating")
    left.set_title(f"per job ({len(ordered)} jobs)")
    left.legend(
        handles=[Patch(color=colour[k], label=label) for k, label in labels.items()], fontsize="small"
    )
    for key, of_set in groups_of(units) if units is not None else []:
        ratios = pd_finite(of_set["isi_violations_ratio"])
        if len(ratios):
            right.hist(
                ratios, bins=min(50, max(5, len(ratios) // 5)), histtype="step", color=colour.get(key, "grey")
            )
    for key, of_set in groups_of(jobs):
        cutoff = float(of_set["param.isi_violations_cutoff"].iloc[0])
        right.axvline(cutoff, color=colour[key], linestyle="--", label=f"cutoff {cutoff:g} ({key[1]})")
    right.legend(fontsize="small")
    right.set_xlabel("isi_violations_ratio")
    right.set_ylabel("units")
    right.set_title("per unit, one outline per version and parameter set")
    figure.suptitle("isi_violations across jobs")
    figure.tight_layout()
    figure.savefig(path, format="png")


def pd_finite(values: pd.Series) -> pd.Series:
    """The finite numbers of ``values`` (NaN and infinite ratios left out)."""
    import pandas as pd

    numbers = pd.to_numeric(values, errors="coerce")
    return numbers[numbers.map(math.isfinite)]


analysis: Analysis[IsiViolationsParams, IsiViolationsOutputs] = Analysis(
    name="isi_violations",
    version="1.0.0",
    params=IsiViolationsParams,
    outputs=IsiViolationsOutputs,
    run=run,
    description=(
        "Refractory-period (ISI) violation ratio and count per unit (Hill, Mehta & Kleinfeld 2011, "
        "as in SpikeInterface's quality metrics) for the units tables of the job's NWB files."
    ),
    figure=FIGURE_NAME,
    summary_rows=summary_rows,
    summary_figure=summary_figure,
)
