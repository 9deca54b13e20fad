"""A real MongoDB wire-protocol server on 127.0.0.1 for the tests: SecantusDB's ``secantusd-py``.

Nothing here patches pymongo: every test talks the MongoDB wire protocol to a server process these
fixtures start (SecantusDB, WiredTiger inside the wheel; GPL-2.0, so it is a dev dependency that runs as a
separate process and is never imported, here or by the package).

* ``mongo_server`` (session): one server for the whole run, or the server named by ``TEST_MONGODB_URI``
  when that is set (then nothing is started and ``kill``/``restart`` refuse). ``.uri`` is
  ``mongodb://127.0.0.1:PORT/?replicaSet=secantus``: the server runs in its default mode, a one-node
  replica set named ``secantus``, so pymongo sees a replica-set primary as it does with AWS DocumentDB or
  Atlas (and ``retryWrites=False``, which the store sets for DocumentDB, changes something).
  ``.direct_uri`` is the same server with ``directConnection=true``.
* ``mongo_server_factory`` (per test): private servers for tests that kill or restart one; always
  SecantusDB, even when ``TEST_MONGODB_URI`` is set, and stopped at the end of the test.
* ``fresh_database_name()``: a unique database name, so tests share the session server without resets.
* ``mongo_server_factory(tls=True)``: a server that speaks only TLS, its certificate signed by a CA made
  for the test (``server.tls.ca_file``, standing in for DocumentDB's ``global-bundle.pem``).

Every server is started with ``--sync-on-commit``: without it, writes acknowledged (w:1, j:false) in the
last fraction of a second before a SIGKILL are lost, which would make kill-and-restart tests flaky. Its
data folder and log (``secantusd.log``) are kept in a pytest temp folder; the process is a
:class:`~analysis_wrapper_tests.servers.ServerProcess` (``host`` runs it on a simulated machine of
:mod:`analysis_wrapper_tests.hosts`). A server that does not answer a ping within ``START_TIMEOUT_S``
fails the test with the tail of its log (never a skip), and a failed test that used a server gets that
server's log tail as a report section.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import urllib.parse
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from analysis_wrapper_tests.servers import LOOPBACK, ServerError, ServerProcess, free_port, log_tail
from analysis_wrapper_tests.tls_files import TlsFiles, make_tls_files

ENV_URI = "TEST_MONGODB_URI"
HOST = LOOPBACK
REPLICA_SET = "secantus"
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
SERVER_FLAGS = ("--sync-on-commit",)


def fresh_database_name(label: str = "t") -> str:
    """A database name no other test uses: ``<label>_<12 hex digits>`` (letters, digits, ``_``)."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", label)[:40] or "t"
    return f"{clean}_{uuid.uuid4().hex[:12]}"


def secantusd_binary() -> str:
    beside_python = Path(sys.executable).parent / "secantusd-py"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("secantusd-py")
    if not found:
        raise ServerError(
            "SecantusDB is not installed: no `secantusd-py` beside the interpreter or on PATH "
            "(`bash scripts/setup.sh dev` installs SecantusDB==0.7.0b3)"
        )
    return found


@dataclass
class MongoServer:
    """One MongoDB server and how to reach it; a SecantusDB process when ``folder`` is set."""

    uri: str
    port: int | None
    host: str = HOST
    folder: Path | None = None
    flags: tuple[str, ...] = SERVER_FLAGS
    tls: TlsFiles | None = None  # set: the server speaks only TLS, with a certificate of this CA
    process: ServerProcess | None = field(default=None, repr=False)

    @classmethod
    def external(cls, uri: str) -> MongoServer:
        """A server someone else runs (``TEST_MONGODB_URI``): used as is, never started or stopped."""
        # No pymongo parsing: a mongodb+srv:// URI would be resolved through DNS.
        match = re.match(r"mongodb://(?:[^@/]*@)?([^,/:?]+)(?::(\d+))?(?:/|\?|$)", uri)
        if match is None:  # several hosts, mongodb+srv://, [IPv6]: host and port are informational only
            return cls(uri=uri, port=None, host="")
        return cls(uri=uri, port=int(match.group(2) or 27017), host=match.group(1))

    @property
    def managed(self) -> bool:
        """True when these fixtures run the server (so it can be killed and restarted)."""
        return self.folder is not None

    @property
    def direct_uri(self) -> str:
        """The same server as a plain single server (``directConnection=true``)."""
        if not self.managed:
            return self.uri
        return f"mongodb://{self.host}:{self.port}/?directConnection=true{self.tls_options}"

    @property
    def tls_options(self) -> str:
        """What a URI to this server needs for TLS (``&tls=true&tlsCAFile=…``): empty without TLS."""
        if self.tls is None:
            return ""
        return f"&tls=true&tlsCAFile={urllib.parse.quote(str(self.tls.ca_file), safe='/')}"

    @property
    def storage_path(self) -> Path | None:
        return None if self.folder is None else self.folder / "data"

    @property
    def log_path(self) -> Path | None:
        return None if self.folder is None else self.folder / "secantusd.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.alive

    @property
    def startup_s(self) -> float | None:
        """Seconds from spawn to the first answered ping (last start)."""
        return None if self.process is None else self.process.startup_s

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def client(self, **options: Any) -> Any:
        """A pymongo client with the store's options (``retryWrites=False``) and a short selection timeout."""
        import pymongo

        settings: dict[str, Any] = {"retryWrites": False, "serverSelectionTimeoutMS": 5000, **options}
        return pymongo.MongoClient(self.uri, **settings)

    def command(self) -> list[str]:
        assert self.folder is not None and self.port is not None
        return [
            secantusd_binary(),
            # An empty config file: with no --config, secantusd-py reads ./secantusd.toml,
            # ~/.secantus/secantusd.toml or /etc/secantus/secantusd.toml if one exists.
            f"--config={self.folder / 'secantusd.toml'}",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--storage-path={self.storage_path}",
            "--log-level=INFO",
            *self.flags,
            *(
                []
                if self.tls is None
                else [f"--tls-cert-file={self.tls.cert_file}", f"--tls-key-file={self.tls.key_file}"]
            ),
        ]

    def start(self, timeout_s: float = START_TIMEOUT_S) -> MongoServer:
        """Start (or start again, same port and data) and wait for a ping; ServerError if none comes."""
        self._require_managed("start")
        assert self.folder is not None and self.log_path is not None
        if self.running:
            raise ServerError(f"the server on port {self.port} is already running")
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "secantusd.toml").touch()
        if self.process is None:
            self.process = ServerProcess("secantusd-py", self.command(), self.log_path, cwd=self.folder)
        self.process.argv = self.command()  # the flags may have changed since the last start
        self.process.start(self._answers_ping, timeout_s, every_s=0.02)
        return self

    def _answers_ping(self) -> bool:
        import pymongo

        assert self.port is not None
        # A plain connect first: pymongo's monitor would re-dial a refused port only every 0.5 s.
        socket.create_connection((self.host, self.port), timeout=0.5).close()
        client: Any = pymongo.MongoClient(
            self.direct_uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000
        )
        try:
            client.admin.command("ping")
            return True
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server (no shutdown, as a crash); its data folder stays for ``start()``."""
        self._require_managed("kill")
        if self.process is not None:
            self.process.kill()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM and wait (about 2 s), SIGKILL if it does not exit in ``timeout_s``."""
        if self.process is not None:
            self.process.stop(timeout_s)

    def restart(self, kill: bool = True, timeout_s: float = START_TIMEOUT_S) -> MongoServer:
        """Kill (or stop cleanly, ``kill=False``) and start again on the same port with the same data."""
        self._require_managed("restart")
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout_s)

    def _require_managed(self, action: str) -> None:
        if not self.managed:
            raise RuntimeError(f"cannot {action} an external server ({ENV_URI}); use mongo_server_factory")


def start_mongo_server(
    folder: Path,
    flags: Sequence[str] = SERVER_FLAGS,
    timeout_s: float = START_TIMEOUT_S,
    tls: bool = False,
    address: str = HOST,
) -> MongoServer:
    """Start SecantusDB on a free port of ``address`` with its data and log under ``folder``; ServerError
    if it fails. With ``tls`` it speaks only TLS, with a certificate for 127.0.0.1 signed by a new CA
    (``server.tls.ca_file``), and its ``uri`` carries ``tls=true&tlsCAFile=``, as DocumentDB's does. Off
    the loopback (``address``), the URI is a direct connection (the replica set names 127.0.0.1).

    The port is picked free just before the start; if another process takes it first, the server exits
    with "Address already in use" and a new port is tried (twice more).
    """
    tls_files = make_tls_files(folder / "tls") if tls else None
    for attempt in range(3):
        port = free_port(address)
        options = f"replicaSet={REPLICA_SET}" if address == HOST else "directConnection=true"
        server = MongoServer(
            uri=f"mongodb://{address}:{port}/?{options}",
            port=port,
            host=address,
            folder=folder,
            flags=tuple(flags),
            tls=tls_files,
        )
        server.uri += server.tls_options
        try:
            return server.start(timeout_s)
        except ServerError as exc:
            if attempt == 2 or "Address already in use" not in str(exc):
                raise
    raise AssertionError("unreachable")


class MongoServerFactory:
    """Starts private servers for one test (``mongo_server_factory``) and stops them afterwards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.servers: list[MongoServer] = []

    def __call__(
        self, flags: Sequence[str] = SERVER_FLAGS, timeout_s: float = START_TIMEOUT_S, tls: bool = False
    ) -> MongoServer:
        folder = self.folder / f"mongo{len(self.servers)}"
        try:
            server = start_mongo_server(folder, flags, timeout_s, tls=tls)
        except ServerError as exc:
            pytest.fail(str(exc))
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        """SIGKILL: the data is thrown away with the test, and a clean stop takes about 2 s."""
        for server in self.servers:
            server.kill()


@pytest.fixture(scope="session")
def mongo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoServer]:
    """The session's MongoDB: ``TEST_MONGODB_URI`` if set, else a SecantusDB process started here."""
    uri = os.environ.get(ENV_URI)
    if uri:
        yield MongoServer.external(uri)
        return
    try:
        server = start_mongo_server(tmp_path_factory.mktemp("mongo"))
    except ServerError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.kill()  # the data is thrown away: a clean stop would only cost its 2 s


@pytest.fixture
def mongo_server_factory(tmp_path: Path) -> Iterator[MongoServerFactory]:
    """``factory()`` starts a private SecantusDB (``MongoServer``) that this test may kill and restart."""
    factory = MongoServerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that used a server gets the tail of that server's log in its report."""
    report = yield
    if report.failed:
        funcargs = getattr(item, "funcargs", {})
        servers = [v for v in funcargs.values() if isinstance(v, MongoServer) and v.managed]
        for value in funcargs.values():
            if isinstance(value, MongoServerFactory):
                servers.extend(value.servers)
        for server in servers:
            report.sections.append(
                (f"secantusd log (port {server.port}, {server.log_path})", server.log_tail())
            )
    return report
