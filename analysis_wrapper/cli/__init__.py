"""``analysis-wrapper``: one-shot use and queries, on the same registry, stores and Dagster instance.

* ``submit PATH...``: validate job files (or folders of them) and register them as partitions;
* ``run [PATH...]``: register, then materialize every pending partition in-process, in batch runs of
  ``--batch-size`` jobs (1: one run of the result asset per job); exits non-zero only when a job
  failed or a file was rejected, after processing all the rest;
* ``status`` / ``results``: the job registry and the records, as a table or ``--json``;
* ``retry``: failed jobs back to pending; ``dispatch``: a metadata-database query, as jobs.

The terminal gets one line per job and per error: Dagster's own event log (every step event and stack
trace) goes to the run's log in the Dagster instance, and a failed job's line names its reason (the root
cause) and where that log is. ``--verbose`` prints Dagster's log and full traces here too.

The commands only parse and print; the work is in :mod:`analysis_wrapper.runner` (runs),
:mod:`analysis_wrapper.records` (queries) and :mod:`analysis_wrapper.session` (what a command opens).
"""

from analysis_wrapper.cli.app import main

__all__ = ["main"]
