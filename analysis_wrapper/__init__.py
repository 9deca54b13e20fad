"""analysis_wrapper: dispatched analysis jobs as Dagster partitions, with provenance and no reruns."""

__version__ = "0.1.0"
