"""Run tags the project sets and reads: how sensors, the CLI and the concurrency limits find runs."""

ANALYSIS_TAG = "analysis_wrapper/analysis"
"""Every run of an analysis (one-partition and batch runs); ``dagster.yaml`` limits runs per value."""
FINGERPRINT_TAG = "analysis_wrapper/fingerprint"
"""The fingerprint a one-partition run computes."""
ATTEMPT_TAG = "analysis_wrapper/attempt"
"""Which attempt of its job a one-partition sensor run is."""
SOURCE_TAG = "analysis_wrapper/source"
"""Who asked for the run: ``sensor`` or ``cli``."""
BATCH_SIZE_TAG = "analysis_wrapper/batch_size"
"""How many partitions a batch run holds (its keys are in its run config)."""
HOST_TAG = "analysis_wrapper/host"
"""The host (name and boot id) of the process running an in-process (CLI) run."""
PID_TAG = "analysis_wrapper/pid"
"""That process's pid: with the host, how the lost-run check knows a killed CLI run is gone."""

# Dagster's own tags, by value: their constants live in ``dagster._core``, which the package does not
# import (``dagster.MAX_RUNTIME_SECONDS_TAG`` is public and used as it is).
PARTITION_TAG = "dagster/partition"
GRPC_INFO_TAG = ".dagster/grpc_info"
DATA_VERSION_TAG = "dagster/data_version"
CODE_VERSION_TAG = "dagster/code_version"
