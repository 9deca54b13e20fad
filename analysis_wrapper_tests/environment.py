"""The one environment scrub of the tests: the caller's environment without any of the package's settings.

A test that starts ``analysis-wrapper`` or ``dagster`` (or calls the CLI in-process) sets the settings it
means; anything a developer or CI exported (``DOCDB_URI``, ``ANALYSIS_BUCKET``, ``DAGSTER_HOME``, a
sensor interval, ...) must not reach it. The AWS variables go too unless ``keep_aws_credentials`` (the
dummy credentials of the ``aws_env`` fixture), and the endpoint always does: where S3 is is a setting.
"""

from __future__ import annotations

import os

import pytest

SETTINGS_PREFIXES = ("DAGSTER_", "DOCDB_", "METADATA_", "DISPATCH_", "SENSOR_", "S3_")
SETTINGS_NAMES = frozenset(
    {
        "ANALYSIS_BUCKET",
        "ANALYSIS_MODULES",
        "ALLOW_DIRTY",
        "AWS_ENDPOINT_URL",
        "CODE_REPOSITORY",
        "DRY_RUN",
        "DRY_RUN_ROOT",
        "GIT_COMMIT",
        "INBOX_SETTLE_S",
        "LEASE_TTL_S",
        "MAX_ATTEMPTS",
        "MAX_JOB_FILE_BYTES",
        "RERUN_ON_NEW_VERSION",
        "RESULTS_ROOT",
        "RETRY_DELAY_S",
        "RUN_MAX_RUNTIME_S",
        "SCRATCH_ROOT",
        "STORE_BUSY_TIMEOUT_S",
        # the test analyses' own settings
        "COUNTING_LOG",
        "FAULT_DIR",
    }
)


def is_setting(name: str, keep_aws_credentials: bool = False) -> bool:
    """Whether ``name`` is a variable the package (or a test analysis) reads as a setting."""
    return (
        name in SETTINGS_NAMES
        or name.startswith(SETTINGS_PREFIXES)
        or (not keep_aws_credentials and name.startswith("AWS_"))
    )


def scrubbed_environ(keep_aws_credentials: bool = False) -> dict[str, str]:
    """A copy of ``os.environ`` for a subprocess, without any setting (see the module docstring)."""
    return {k: v for k, v in os.environ.items() if not is_setting(k, keep_aws_credentials)}


def scrub_settings(monkeypatch: pytest.MonkeyPatch, keep_aws_credentials: bool = True) -> None:
    """The same scrub on this process's environment, for an in-process CLI (undone after the test)."""
    for name in [k for k in os.environ if is_setting(k, keep_aws_credentials)]:
        monkeypatch.delenv(name)
