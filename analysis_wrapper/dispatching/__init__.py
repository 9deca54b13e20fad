"""Dispatch inside Dagster: a metadata-database query becomes registered jobs (the AIND dispatcher's work).

One concept per module, in the order a dispatch runs:

* :mod:`.dispatch_config` — :class:`DispatchSettings`, the dispatcher's settings (also the Launchpad config);
* :mod:`.query` — the ``docdb_query`` (JSON text or file) and the CSV of asset ids, validated;
* :mod:`.metadata_db` — the metadata collection (``METADATA_DOCDB_*``), credential-free errors;
* :mod:`.grouping` — the aggregation pipeline: ``group_by``, ``filter_latest``/``filter_by``,
  ``unwind_list_fields``, ``drop_null_groups``;
* :mod:`.files` — ``file_extension``: each asset's matching files, recursively, local or S3;
* :mod:`.jobs` — job dicts exactly as the dispatcher writes them, ``split_files``, parameter sets;
* :mod:`.dispatch_run` — the one pass: query → jobs → skip recorded/registered → register → report;
* :mod:`.output` — the jobs as files in a folder or S3 prefix, named as the dispatcher names them;
* :mod:`.record` — each dispatch recorded as a materialization of ``<analysis>_dispatches``;
* :mod:`.saved` — saved queries (one YAML file each) that a sensor re-runs;
* :mod:`.definitions` — ``<analysis>_dispatch_job``, the saved-query sensors, the dispatch assets;
* :mod:`.cli` — ``analysis-wrapper dispatch``.
"""
