"""The Dagster UI side of the benchmarks: ``dagster dev`` or ``dagster-webserver`` over a fresh
``DAGSTER_HOME`` serving the code location ``benchmarks.daemon_defs``, and GraphQL sent to it over HTTP
exactly as the UI sends it (the query texts below are copied from dagster-webserver's bundled JS).

Started with the tests' launcher (:class:`analysis_wrapper_tests.servers.ServerProcess`): its own process
group, so stopping it reaches the webserver, daemon, code server and run workers.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import REPO_ROOT

START_TIMEOUT_S = 180.0

# The mutation of the UI's Materialize dialog (LaunchPartitionBackfill, trimmed to the fields read here).
LAUNCH_PARTITION_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionKeysNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

# The Partitions tab's query, verbatim (dagster-webserver's bundled JS: PartitionHealthQuery).
PARTITION_HEALTH_QUERY = """
  query PartitionHealthQuery($assetKey: AssetKeyInput!) {
    assetNodeOrError(assetKey: $assetKey) {
      ... on AssetNode {
        id
        partitionKeysByDimension {
          name
          type
          partitionKeys
        }
        assetPartitionStatuses {
          ... on TimePartitionStatuses {
            ranges {
              status
              startTime
              endTime
              startKey
              endKey
            }
          }
          ... on DefaultPartitionStatuses {
            materializedPartitions
            materializingPartitions
            failedPartitions
          }
          ... on MultiPartitionStatuses {
            primaryDimensionName
            ranges {
              primaryDimStartKey
              primaryDimEndKey
              primaryDimStartTime
              primaryDimEndTime
              secondaryDim {
                ... on TimePartitionStatuses {
                  ranges {
                    status
                    startTime
                    endTime
                    startKey
                    endKey
                  }
                }
                ... on DefaultPartitionStatuses {
                  materializedPartitions
                  materializingPartitions
                  failedPartitions
                }
              }
            }
          }
        }
      }
    }
  }
"""

ASSET_NODE_PROBE = """
query Probe($assetKey: AssetKeyInput!) { assetNodeOrError(assetKey: $assetKey) { __typename } }
"""


@dataclass
class GraphQLReply:
    data: dict[str, Any]
    seconds: float
    bytes: int


def write_workspace(root: Path) -> Path:
    """A workspace with the benchmarks' code location (the shipped definitions, trivial analysis)."""
    path = root / "workspace.yaml"
    path.write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: benchmarks.daemon_defs\n"
        f"      working_directory: {REPO_ROOT}\n"
    )
    return path


class DagsterUI:
    """``dagster dev`` (with ``daemon=True``: webserver, daemon, code server) or ``dagster-webserver``
    alone, on 127.0.0.1 and a free port."""

    def __init__(self, root: Path, env: Mapping[str, str], daemon: bool) -> None:
        from analysis_wrapper_tests.servers import ServerProcess, free_port

        self.port = free_port()
        workspace = write_workspace(root)
        bin_dir = Path(sys.executable).parent
        host = ["-h", "127.0.0.1", "-p", str(self.port)]
        if daemon:
            argv = [str(bin_dir / "dagster"), "dev", "-w", str(workspace), *host]
        else:
            argv = [str(bin_dir / "dagster-webserver"), "-w", str(workspace), *host]
        self.url = f"http://127.0.0.1:{self.port}/graphql"
        self.process = ServerProcess(
            "dagster dev" if daemon else "dagster-webserver", argv, root / "dagster_ui.log", root, dict(env)
        )

    def start(self, asset_path: list[str]) -> float:
        """Start; wait until the webserver answers for ``asset_path`` (code location loaded); seconds."""

        def ready() -> bool:
            reply = self.graphql(ASSET_NODE_PROBE, {"assetKey": {"path": asset_path}}, timeout=10)
            return bool(reply.data["assetNodeOrError"]["__typename"] == "AssetNode")

        self.process.start(ready, timeout_s=START_TIMEOUT_S, every_s=0.25)
        return float(self.process.startup_s or 0.0)

    def stop(self) -> None:
        self.process.stop(timeout_s=20)

    def graphql(self, query: str, variables: Mapping[str, Any], timeout: float = 600) -> GraphQLReply:
        """POST the query as the UI does; the reply's data, seconds to the last byte, and its size."""
        body = json.dumps({"query": query, "variables": dict(variables)}).encode()
        request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
        seconds = time.perf_counter() - start
        reply = json.loads(raw)
        if reply.get("errors"):
            raise RuntimeError(f"GraphQL errors: {json.dumps(reply['errors'])[:300]}")
        return GraphQLReply(reply["data"], seconds, len(raw))


@contextlib.contextmanager
def dagster_ui(
    root: Path, env: Mapping[str, str], asset_path: list[str], daemon: bool
) -> Iterator[DagsterUI]:
    """A started :class:`DagsterUI`, stopped (its whole process group) at the end."""
    ui = DagsterUI(root, env, daemon)
    try:
        ui.start(asset_path)
        yield ui
    finally:
        ui.stop()
