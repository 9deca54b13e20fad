"""All recorded jobs of an analysis together: one table (and a figure) across its jobs.

* :mod:`.table`: one row per record (partition key, inputs, merged parameters and their
  ``parameter_set`` label, version, outputs, location), the same for the summary asset and for
  notebooks (:func:`analysis_wrapper.records.results_frame`);
* :mod:`.figures`: the figure across jobs, the analysis's own (``Analysis.summary_figure``) or
  histograms of its outputs, one colour per version and parameter set;
* :mod:`.new_results`: which results are new to a summary (its cursor, and why it re-reads a minute);
* :mod:`.asset`: the ``<analysis>_summary`` asset, updated incrementally by declarative automation,
  with the analysis's own rows (``Analysis.summary_rows``) read once per new job.
"""
