"""The figure across an analysis's jobs: the analysis's own (``Analysis.summary_figure``), else
histograms of its numeric outputs; either way one colour per version and parameter set, named in the
legend, so jobs that ran differently are never pooled unsaid.

:func:`group_labels` names the groups for any figure; :func:`new_figure` gives a matplotlib ``Figure``
on the Agg canvas, touching no global pyplot state (the summary runs inside long-lived Dagster
processes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis_wrapper.analysis import Analysis

if TYPE_CHECKING:
    import pandas as pd

GROUP_COLUMNS = ["analysis_version", "parameter_set"]
"""What keeps jobs apart in a figure: rows of the job table and the analysis's own rows both carry them."""


def group_labels(jobs: pd.DataFrame) -> dict[tuple[str, str], str]:
    """(version, parameter set) -> its legend label, in a stable order: the version, the set's label and
    the parameters whose values differ between the sets (``v1.0.0 p-1a2b3c4d: cutoff=0.9``)."""
    if jobs.empty:
        return {}
    sets = jobs.drop_duplicates(GROUP_COLUMNS).sort_values(GROUP_COLUMNS)
    values = {
        key: json.loads(text) for key, text in zip(sets["parameter_set"], sets["parameters"], strict=True)
    }
    names = sorted({name for params in values.values() for name in params})
    varying = [n for n in names if len({json.dumps(p.get(n), default=str) for p in values.values()}) > 1]
    labels = {}
    for version, key in zip(sets["analysis_version"], sets["parameter_set"], strict=True):
        shown = ", ".join(f"{n}={values[key].get(n)}" for n in varying)
        labels[(str(version), str(key))] = f"v{version} {key}" + (f": {shown}" if shown else "")
    return labels


def groups_of(frame: pd.DataFrame) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """``frame``'s rows by (version, parameter set), in :func:`group_labels`' order."""
    keys = frame[GROUP_COLUMNS].astype(str)
    return [(key, frame[(keys == list(key)).all(axis=1)]) for key in sorted({*map(tuple, keys.values)})]


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=90)
    FigureCanvasAgg(figure)
    return figure


def outputs_figure(name: str, jobs: pd.DataFrame, path: Path) -> None:
    """Histograms of (up to four) numeric outputs across jobs, one colour per version and parameter
    set; an empty-state figure while there is no job."""
    import pandas as pd  # ~0.5 s to import: paid by a summary run, not by every process loading the code

    numeric = [c for c in jobs.columns if c.startswith("out.") and pd.api.types.is_numeric_dtype(jobs[c])]
    numeric = numeric[:4] if len(jobs) else []
    figure = new_figure(4 * max(1, len(numeric)), 3.8)
    axes = figure.subplots(1, max(1, len(numeric)), squeeze=False)[0]
    labels = group_labels(jobs)
    for ax, column in zip(axes, numeric, strict=False):
        bins = np.histogram_bin_edges(jobs[column].dropna().astype(float), bins=20)  # shared by the groups
        for key, rows in groups_of(jobs):
            ax.hist(rows[column].dropna().astype(float), bins=bins, alpha=0.5, label=labels[key])
        ax.set_xlabel(column.removeprefix("out."))
        ax.set_ylabel("jobs")
    if numeric:
        axes[0].legend(fontsize="small")
    else:
        axes[0].text(
            0.5, 0.5, "no jobs yet" if jobs.empty else "no numeric outputs", ha="center", va="center"
        )
        axes[0].set_axis_off()
    figure.suptitle(f"{name} across {len(jobs)} jobs ({len(labels)} version/parameter sets)")
    figure.tight_layout()
    figure.savefig(path, format="png")


def draw_summary_figure(
    analysis: Analysis[Any, Any], jobs: pd.DataFrame, rows: pd.DataFrame | None, path: Path
) -> None:
    """The analysis's own figure when it has one and there are jobs, else :func:`outputs_figure`."""
    if analysis.summary_figure is not None and not jobs.empty:
        analysis.summary_figure(jobs, rows, path)
    else:
        outputs_figure(analysis.name, jobs, path)
