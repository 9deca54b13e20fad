"""The summary table for notebooks: the records of the store as a pandas DataFrame.

``results_frame()`` gives the rows ``<analysis>_summary`` holds (see :mod:`.table`), straight from the
record store the settings name (SQLite under ``DAGSTER_HOME``, or ``DOCDB_URI``), with the filters of
``analysis-wrapper results``::

    from analysis_wrapper.summary import results_frame
    df = results_frame("isi_violations", params={"isi_violations_cutoff": 0.5}, latest=True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from analysis_wrapper.settings import Settings
from analysis_wrapper.summary.table import summary_frame


def results_frame(
    analysis: str | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    code_version: str | None = None,
    latest: bool = False,
    include_superseded: bool = False,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """One row per record, oldest first: ``analysis`` (default: all), records whose merged parameters
    hold ``params`` exactly, of analysis version ``code_version``, only the newest record per input
    (``latest``), records replaced under ``force`` too (``include_superseded``). The filters run in
    the database, as ``analysis-wrapper results --param/--code-version/--latest/--include-superseded``."""
    from analysis_wrapper.cli import latest_per_input
    from analysis_wrapper.definitions import store_resource

    resource = store_resource(settings or Settings())
    store = resource.get_store()
    records = store.find_records(
        analysis,
        parameters=dict(params) if params else None,
        code_version=code_version,
        include_superseded=include_superseded,
    )
    if latest:
        records = latest_per_input(records)
    return summary_frame(records)
