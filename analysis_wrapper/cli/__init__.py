"""``analysis-wrapper``: submit, run, status, retry, results, dispatch and new (a team's project), on
the Definitions, stores and Dagster instance the code location uses. The commands parse and print (one
line per job and per error; Dagster's own log goes to the run's log in the instance, ``--verbose`` prints
it here too); the work is in :mod:`analysis_wrapper.runner`, :mod:`analysis_wrapper.records` and
:mod:`analysis_wrapper.session`."""

from analysis_wrapper.cli.app import main

__all__ = ["main"]
