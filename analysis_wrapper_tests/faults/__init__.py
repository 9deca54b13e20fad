"""The fault suite: bad input, crashes, outages, races, secrets and load, each section reporting its counts
through :mod:`analysis_wrapper_tests.faults.report`."""
