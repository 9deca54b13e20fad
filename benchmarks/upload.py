"""Item 4: uploading one results folder to a local S3 server (SeaweedFS ``weed mini`` on 127.0.0.1).

Ours: ``S3ResultsStorage.put_result`` (what the results IO manager calls: clear leftovers, upload the
files through one boto3 transfer manager, small ones and parts of large ones 10 at a time, each request
with its CRC32, check the folder, then ``outputs.json`` and ``metadata.nd.json``) through the client of
dagster-aws's ``S3Resource``, as the IO manager makes it. Compared with ``aws s3 cp --recursive``
(awscli), ``s5cmd cp`` and plain boto3 (one ``TransferManager`` with the same part sizes and
concurrency, without our checks) on the same folder,
same server, same run; each repeat uploads to a new prefix and the order rotates between repeats.
The tools' times include starting their process (awscli: a Python interpreter); ours runs in the
process that already holds the client, as in a Dagster run.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from benchmarks.common import (
    S3_ENV,
    Entry,
    RunOptions,
    SeaweedServer,
    compared,
    entry,
    environment,
    failed,
    find_tool,
    median,
    not_installed,
    stopwatch,
)

BUCKET = "bench-upload"


def make_folder(
    root: Path, small: int, small_bytes: int, large: int, large_bytes: int
) -> tuple[Path, int, int]:
    """Random (incompressible) files: ``small`` under ``tables/``, ``large`` at the top."""
    folder = root / "result_folder"
    (folder / "tables").mkdir(parents=True, exist_ok=True)
    for i in range(small):
        (folder / "tables" / f"part_{i:04d}.bin").write_bytes(os.urandom(small_bytes))
    for i in range(large):
        with (folder / f"large_{i}.bin").open("wb") as handle:
            for _ in range(large_bytes // (4 * 1024 * 1024)):
                handle.write(os.urandom(4 * 1024 * 1024))
            handle.write(os.urandom(large_bytes % (4 * 1024 * 1024)))
    files = small + large
    return folder, files, small * small_bytes + large * large_bytes


def _count(client: object, prefix: str) -> int:
    paginator = client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
    return sum(len(page.get("Contents", [])) for page in paginator.paginate(Bucket=BUCKET, Prefix=prefix))


def _spread(seconds: list[float]) -> str:
    return f"{len(seconds)}: {min(seconds):.2f}-{max(seconds):.2f} s"


def run(options: RunOptions) -> list[Entry]:
    sizes = options.sizes
    weed = find_tool("WEED", "weed")
    name = "upload"
    if weed is None:
        return [not_installed(f"{name}: SeaweedFS server", "weed")]
    aws = find_tool("AWSCLI", "aws")
    s5cmd = find_tool("S5CMD", "s5cmd")
    root = Path(options.workdir) / "upload"
    folder, n_files, n_bytes = make_folder(
        root,
        sizes.upload_small_files,
        sizes.upload_small_bytes,
        sizes.upload_large_files,
        sizes.upload_large_bytes,
    )
    mb = n_bytes / 1e6
    label = (
        f"upload {sizes.upload_small_files}x{sizes.upload_small_bytes // 1024} KB + "
        f"{sizes.upload_large_files}x{sizes.upload_large_bytes / 2**20:g} MB ({mb:.0f} MB)"
    )
    options.log(f"  {label}: starting SeaweedFS")
    tool_env = {
        **os.environ,
        **S3_ENV,
        "AWS_CONFIG_FILE": str(root / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(root / "no-aws-credentials"),
    }
    with (
        SeaweedServer(root / "seaweed" / "data", weed) as server,
        environment(**S3_ENV, AWS_ENDPOINT_URL=None),
    ):
        from dagster_aws.s3 import S3Resource
        from s3transfer.manager import TransferManager

        from analysis_wrapper.resources.results_storage import result_files
        from analysis_wrapper.resources.s3_storage import DEFAULT_TRANSFER, S3ResultsStorage

        client = S3Resource(endpoint_url=server.endpoint).get_client()
        client.create_bucket(Bucket=BUCKET)

        def ours(prefix: str) -> None:
            storage = S3ResultsStorage(client, BUCKET, prefix)
            storage.put_result("fp", folder, {"n_files": n_files}, {"_id": "fp", "name": "fp"})

        def transfer_only(prefix: str) -> None:
            # Plain boto3: one transfer manager (same client, part sizes and concurrency) for every file,
            # without clearing leftovers, without the two JSON files and without verifying anything.
            with TransferManager(client, DEFAULT_TRANSFER) as manager:
                futures = [
                    manager.upload(str(path), BUCKET, f"{prefix}/{path.relative_to(folder).as_posix()}")
                    for path in result_files(folder)
                ]
                for future in futures:
                    future.result()

        def tool(cmd: list[str]) -> None:
            done = subprocess.run(cmd, env=tool_env, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    f"{Path(cmd[0]).name} exited {done.returncode}: {done.stderr.strip()[:300]}"
                )

        ways: dict[str, Callable[[str], None] | None] = {
            "ours": ours,
            "boto3": transfer_only,
            "awscli": None
            if aws is None
            else lambda p: tool(
                [
                    aws,
                    "s3",
                    "cp",
                    "--recursive",
                    "--only-show-errors",
                    "--endpoint-url",
                    server.endpoint,
                    str(folder),
                    f"s3://{BUCKET}/{p}/",
                ]
            ),
            "s5cmd": None
            if s5cmd is None
            else lambda p: tool(
                [s5cmd, "--endpoint-url", server.endpoint, "cp", f"{folder}/*", f"s3://{BUCKET}/{p}/"]
            ),
        }
        expected = {"ours": n_files + 2, "boto3": n_files, "awscli": n_files, "s5cmd": n_files}
        times: dict[str, list[float]] = {way: [] for way, action in ways.items() if action is not None}
        errors: dict[str, str] = {}
        order = list(times)
        for repeat in range(sizes.upload_repeats):
            rotated = order[repeat % len(order) :] + order[: repeat % len(order)]
            for way in rotated:
                if way in errors:
                    continue
                action = ways[way]
                assert action is not None
                prefix = f"{way}-{repeat}"
                options.log(f"    {way} (repeat {repeat + 1}/{sizes.upload_repeats})")
                try:
                    with stopwatch() as t:
                        action(prefix)
                    stored = _count(client, prefix + "/")
                    if stored != expected[way]:
                        raise RuntimeError(f"{stored} objects stored, expected {expected[way]}")
                    times[way].append(t[0])
                except Exception as exc:
                    errors[way] = f"{type(exc).__name__}: {exc}"
        # What awscli's figure holds besides uploading: starting a Python interpreter and awscli.
        startup: list[float] = []
        if aws is not None and "awscli" not in errors:
            for _ in range(3):
                with stopwatch() as t:
                    tool([aws, "--version"])
                startup.append(t[0])

    if "ours" in errors:
        return [failed(f"{label}: S3ResultsStorage.put_result", errors["ours"])]
    ours_s = median(times["ours"])
    entries = [
        entry(
            f"{label}: S3ResultsStorage.put_result",
            mb / ours_s,
            "MB/s",
            note=f"{ours_s:.2f} s (median of {_spread(times['ours'])})",
        )
    ]
    tool_names = {
        "awscli": "aws s3 cp --recursive",
        "s5cmd": "s5cmd cp",
        "boto3": "boto3 TransferManager (no verification)",
    }
    for way, target in (("awscli", "≤ 1.0x awscli time"), ("s5cmd", None), ("boto3", None)):
        tool_name = tool_names[way]
        row = f"{label}: put_result vs {tool_name}"
        if ways[way] is None:
            entries.append(not_installed(row, way))
        elif way in errors:
            entries.append(failed(row, errors[way]))
        else:
            # Ours and the tool ran next to each other in each repeat: their ratio per repeat is less
            # exposed to the machine's load changing over the whole benchmark than the medians are.
            pairs = "/".join(f"{a / b:.2f}" for a, b in zip(times["ours"], times[way], strict=False))
            note = (
                f"{tool_name}: {mb / median(times[way]):.0f} MB/s, median of {_spread(times[way])}; "
                f"ratio per repeat {pairs}"
            )
            if way == "awscli" and startup:
                note += f"; starting awscli alone takes {median(startup):.2f} s"
            entries.append(
                compared(
                    row,
                    ours_s,
                    "s",
                    tool_name,
                    median(times[way]),
                    "time ratio",
                    target=target,
                    met=(lambda r: r <= 1.0) if target else None,
                    note=note,
                )
            )
    return entries
