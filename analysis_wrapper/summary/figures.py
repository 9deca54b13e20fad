"""The figure across an analysis's jobs, and what it needs from each job beyond its record.

Most analyses get histograms of their numeric outputs across jobs. ``isi_violations`` gets the
figure its scientists look at: the fraction of violating units per session, and the distribution of
the per-unit ``isi_violations_ratio`` pooled over every session. The per-unit ratios are not in the
record, so they come from each job's ``isi_violations.csv``: read once, when the job is new to the
summary, and kept beside it (``units.parquet``), so an update reads only new jobs' folders.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from analysis_wrapper.resources.results_resources import storage_for_location

UnitsReader = Callable[[dict[str, Any], Any], pd.DataFrame]
"""(record, s3 client) -> per-unit rows of that job (with its ``partition_key``)."""


def _isi_units(record: dict[str, Any], s3_client: Any) -> pd.DataFrame:
    from analysis_wrapper.analyses.isi_violations import CSV_NAME

    storage, name = storage_for_location(str(record["location"]), s3_client)
    frame = pd.read_csv(io.BytesIO(storage.read_bytes(name, CSV_NAME)))
    frame.insert(0, "partition_key", (record.get("analysis_wrapper") or {}).get("partition_key"))
    return frame


UNIT_READERS: dict[str, UnitsReader] = {"isi_violations": _isi_units}
"""Per analysis: how to read one job's per-unit rows (analyses without one keep no units table)."""


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def summary_figure(analysis: str, jobs: pd.DataFrame, units: pd.DataFrame | None) -> bytes:
    """The PNG across jobs (an empty-state figure when there is no job yet)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if analysis == "isi_violations" and "out.fraction_violating" in jobs.columns:
        figure = _isi_figure(plt, jobs, units)
    else:
        figure = _outputs_figure(plt, analysis, jobs)
    try:
        return _png(figure)
    finally:
        plt.close(figure)


def _isi_figure(plt: Any, jobs: pd.DataFrame, units: pd.DataFrame | None) -> Any:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    ordered = jobs.sort_values("out.fraction_violating", ascending=False)
    labels = [s or k for s, k in zip(ordered["session"], ordered["partition_key"], strict=True)]
    left.barh(range(len(ordered)), ordered["out.fraction_violating"].astype(float), color="tab:red")
    left.set_yticks(range(len(ordered)), labels=labels if len(ordered) <= 30 else [""] * len(ordered))
    left.invert_yaxis()
    left.set_xlabel("fraction of units violating")
    left.set_title(f"per session ({len(ordered)} sessions)")
    ratios = (
        pd.to_numeric(units["isi_violations_ratio"], errors="coerce") if units is not None else pd.Series([])
    )
    finite = ratios[ratios.map(lambda v: isinstance(v, float) and math.isfinite(v))]
    if len(finite):
        right.hist(finite, bins=min(50, max(5, len(finite) // 5)), color="tab:blue")
    if "param.isi_violations_cutoff" in jobs.columns:
        for cutoff in sorted(set(jobs["param.isi_violations_cutoff"].dropna())):
            right.axvline(float(cutoff), color="black", linestyle="--", label=f"cutoff {cutoff}")
        right.legend()
    right.set_xlabel("isi_violations_ratio")
    right.set_ylabel("units")
    right.set_title(f"per unit, pooled ({len(finite)} units with a finite ratio)")
    figure.suptitle("isi_violations across jobs")
    figure.tight_layout()
    return figure


def _outputs_figure(plt: Any, analysis: str, jobs: pd.DataFrame) -> Any:
    numeric = [c for c in jobs.columns if c.startswith("out.") and pd.api.types.is_numeric_dtype(jobs[c])][:4]
    figure, axes = plt.subplots(1, max(1, len(numeric)), figsize=(4 * max(1, len(numeric)), 3.5))
    axes = list(axes) if len(numeric) > 1 else [axes]
    for ax, column in zip(axes, numeric, strict=False):
        ax.hist(jobs[column].dropna().astype(float), bins=20)
        ax.set_xlabel(column.removeprefix("out."))
        ax.set_ylabel("jobs")
    if not numeric:
        axes[0].text(0.5, 0.5, "no numeric outputs yet", ha="center", va="center")
        axes[0].set_axis_off()
    figure.suptitle(f"{analysis} across {len(jobs)} jobs")
    figure.tight_layout()
    return figure
