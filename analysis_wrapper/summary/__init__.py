"""All recorded jobs of an analysis together: one table (and a figure) across its jobs.

* :mod:`.table`: one row per record (partition key, inputs, merged parameters, version, outputs,
  location), the same for the summary asset and for notebooks
  (:func:`analysis_wrapper.records.results_frame`);
* :mod:`.figures`: the figure across jobs (for ``isi_violations``: per-session fraction of violating
  units and the pooled per-unit ratios), and per-job extras read once from each result folder;
* :mod:`.asset`: the ``<analysis>_summary`` asset, updated incrementally by declarative automation.
"""
