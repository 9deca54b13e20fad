"""A real PostgreSQL server on 127.0.0.1 for the tests: Debian's ``postgresql`` binaries, started here.

* ``postgres_server`` (session): one server for the whole run, or the server named by
  ``TEST_POSTGRES_DSN`` (``postgresql://user:password@host:port/db``; the role must be allowed to create
  databases) when that is set: then nothing is started and ``kill``/``start`` refuse.
  ``.host``, ``.port``, ``.user``, ``.password``; ``.dsn`` (the ``postgres`` database) and
  ``.dsn_for(db)``; ``.new_database(label)`` creates a fresh, empty database and returns its name;
  ``.env(db)`` is the ``DAGSTER_PG_*`` environment ``deploy/dagster.yaml`` reads; ``.connect(db)`` a psycopg2
  connection (autocommit); ``.kill()`` stops it as a crash would (SIGQUIT, PostgreSQL's immediate shutdown: no
  checkpoint, recovery at the next start) and ``.start()`` starts it again, same port, same data.

The server is a throwaway cluster: ``initdb`` into a fresh ``mkdtemp`` folder, then ``postgres`` itself as a
:class:`~analysis_wrapper_tests.servers.ServerProcess` on a free port with its socket in that folder, TCP on
127.0.0.1 only (``address`` and ``allow_subnet`` put it on the many-hosts test's network instead). The
bootstrap role (``aw_test``, a superuser, so it can create databases) has a random password, and TCP
connections must give it (scram-sha-256); only the socket in the private folder trusts local users.
``fsync=off``: a crash of the server process (``kill``) loses nothing with it, only a crash of the machine
would. ``initdb`` refuses to run as root, so under root ``initdb`` (``runuser -u postgres --``) and the
server run as the ``postgres`` user on folders it owns, and the ``mkdtemp`` folder is made traversable
(``o+x``) for it. Missing binaries fail the test with the command that installs them (never a skip); a
server that does not start fails it with the tail of its log, and a failed test that used the server gets
that tail as a report section. At session end the server is stopped (``-m immediate``) and its folder
removed.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest

from analysis_wrapper_tests.servers import LOOPBACK, ServerError, ServerProcess, free_port, log_tail

ENV_DSN = "TEST_POSTGRES_DSN"
HOST = LOOPBACK
USER = "aw_test"
OS_USER = "postgres"
"""The account that runs the server when the tests run as root (Debian's package creates it)."""
BIN_GLOB = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = "install Debian's PostgreSQL server: `apt-get install -y postgresql` (as root; .ci/run does)"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
SERVER_OPTIONS = (
    "fsync=off",  # a killed server process loses nothing; only a machine crash would
    "max_connections=200",  # dagster dev: webserver, daemon threads, code server, run workers
    "shared_buffers=32MB",
)


def fresh_database_name(label: str = "t") -> str:
    """A database name no other test uses: ``<label>_<12 hex digits>`` (lower case, digits, ``_``)."""
    clean = re.sub(r"[^a-z0-9_]", "_", label.lower())[:40] or "t"
    return f"{clean}_{uuid.uuid4().hex[:12]}"


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``postgres``, else the folder
    of an ``initdb`` on PATH; RuntimeError naming the install command when there is none."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates = sorted((Path(p) for p in glob.glob(BIN_GLOB)), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "postgres").is_file():
            return folder
    raise ServerError(
        f"PostgreSQL server binaries not found (no {BIN_GLOB}/initdb, no initdb on PATH): {INSTALL_HINT}"
    )


@dataclass
class PostgresServer:
    """One PostgreSQL server and how to reach it; a cluster these fixtures run when ``folder`` is set."""

    host: str
    port: int
    user: str
    password: str
    database: str = "postgres"
    folder: Path | None = None
    bin_dir: Path | None = None
    initdb_s: float | None = None
    _as_user: list[str] = field(default_factory=list, repr=False)
    process: ServerProcess | None = field(default=None, repr=False)

    # ---- how to reach it -------------------------------------------------------------------------------
    @classmethod
    def external(cls, dsn: str) -> PostgresServer:
        """A server someone else runs (``TEST_POSTGRES_DSN``): used as is, never started or stopped."""
        parts = urlsplit(dsn)
        if parts.scheme not in ("postgresql", "postgres") or not parts.hostname or not parts.username:
            raise RuntimeError(
                f"{ENV_DSN} must look like postgresql://user:password@host:port/db, not {dsn!r}"
            )
        return cls(
            host=parts.hostname,
            port=parts.port or 5432,
            user=unquote(parts.username),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/") or "postgres",
        )

    @property
    def managed(self) -> bool:
        """True when these fixtures run the server (so it can be killed and started again)."""
        return self.folder is not None

    @property
    def dsn(self) -> str:
        """``postgresql://user:password@host:port/postgres`` (the maintenance database)."""
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        userinfo = f"{quote(self.user, safe='')}:{quote(self.password, safe='')}"
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{database}"

    def env(self, database: str | None = None) -> dict[str, str]:
        """The variables ``deploy/dagster.yaml`` (and ``deploy/ecs/dagster.yaml``) read, for ``database``."""
        return {
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_DB": database or self.database,
            "DAGSTER_PG_PORT": str(self.port),
        }

    def connect(self, database: str | None = None, **options: Any) -> Any:
        """A psycopg2 connection over TCP with the password, in autocommit mode."""
        import psycopg2

        conn = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database or self.database,
            connect_timeout=5,
            **options,
        )
        conn.autocommit = True
        return conn

    def new_database(self, label: str = "t") -> str:
        """Create an empty database owned by ``user``; its name (``fresh_database_name(label)``)."""
        from psycopg2 import sql

        name = fresh_database_name(label)
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return name

    def query(self, database: str, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        """Rows of one statement in ``database``."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(statement, params or None)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    # ---- the cluster -----------------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path | None:
        return None if self.folder is None else self.folder / "data"

    @property
    def socket_dir(self) -> Path | None:
        return None if self.folder is None else self.folder / "socket"

    @property
    def log_path(self) -> Path | None:
        return None if self.folder is None else self.folder / "postgres.log"

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    @property
    def startup_s(self) -> float | None:
        """Seconds from the last start to the first password login (initdb not included)."""
        return None if self.process is None else self.process.startup_s

    @property
    def pid(self) -> int | None:
        """The postmaster's pid (first line of ``postmaster.pid``) while the server runs."""
        if self.data_dir is None:
            return None
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, *args: str, timeout_s: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        assert self.folder is not None
        return subprocess.run(
            [*self._as_user, *args],
            cwd=self.folder,  # the server's user may not be allowed into ours
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def _fail(self, what: str, result: subprocess.CompletedProcess[str]) -> ServerError:
        output = (result.stdout + result.stderr).strip()
        return ServerError(
            f"{what} (data in {self.data_dir}):\n{output}\n--- {self.log_path} ---\n{self.log_tail()}"
        )

    def init(self) -> PostgresServer:
        """``initdb`` a new cluster into ``folder/data``: role ``user`` with ``password``."""
        self._require_managed("init")
        assert self.folder is not None and self.bin_dir is not None and self.data_dir is not None
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        self._own(pwfile)
        began = time.monotonic()
        result = self._run(
            str(self.bin_dir / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={self.user}",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
            timeout_s=120,
        )
        pwfile.unlink()
        if result.returncode != 0:
            raise self._fail(f"initdb failed with code {result.returncode}", result)
        self.initdb_s = time.monotonic() - began
        return self

    def start(self, timeout_s: float = START_TIMEOUT_S) -> PostgresServer:
        """Start ``postgres`` (again, after ``kill``: same port, same data) and wait until it accepts a
        password login over TCP; ServerError with the log tail if it does not."""
        self._require_managed("start")
        assert self.bin_dir is not None and self.data_dir is not None and self.log_path is not None
        options = [f"listen_addresses={self.host}", *SERVER_OPTIONS]
        argv = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        argv += ["-k", str(self.socket_dir), *(arg for option in options for arg in ("-c", option))]
        self.process = ServerProcess(
            "postgres",
            argv,
            self.log_path,
            cwd=self.folder,  # the server's user may not be allowed into ours
            env={**os.environ, "LC_ALL": "C", "LANG": "C"},
            user=OS_USER if self._as_user else None,
        )
        self.process.start(self._accepts_login, timeout_s)
        return self

    def _accepts_login(self) -> bool:
        self.connect().close()
        return True

    def kill(self) -> None:
        """Stop as a crash would: SIGQUIT (PostgreSQL's immediate shutdown: no checkpoint, recovery at
        the next start)."""
        self._require_managed("kill")
        self.stop()

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT) at the end too (the data is thrown away); SIGKILL if it lingers."""
        if self.process is not None:
            self.process.stop(STOP_TIMEOUT_S, sig=signal.SIGQUIT)

    def remove(self) -> None:
        """Delete the cluster's folder (the server must be stopped)."""
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _own(self, path: Path) -> None:
        if self._as_user:
            account = pwd.getpwnam(OS_USER)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _require_managed(self, action: str) -> None:
        if not self.managed:
            raise RuntimeError(f"cannot {action} an external server ({ENV_DSN})")


def _run_as() -> list[str]:
    """``runuser -u postgres --`` under root (initdb refuses root), nothing otherwise."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        raise RuntimeError(
            f"running as root, and there is no `{OS_USER}` user to run PostgreSQL as: {INSTALL_HINT}"
        ) from None
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    if not Path(runuser).is_file():
        raise RuntimeError("running as root, and there is no `runuser` to run PostgreSQL as postgres")
    return [runuser, "-u", OS_USER, "--"]


def start_postgres_server(
    timeout_s: float = START_TIMEOUT_S, address: str = HOST, allow_subnet: str | None = None
) -> PostgresServer:
    """initdb a new cluster in a new temporary folder and start it on a free port of ``address``; with
    ``allow_subnet`` (``10.1.2.0/24``) that network may log in with the password too.

    The port is picked free just before the start; if another process takes it first, the server exits
    ("could not bind") and a new port is tried (twice more).
    """
    bin_dir = postgres_bin_dir()
    as_user = _run_as()
    folder = Path(tempfile.mkdtemp(prefix="aw-postgres-"))
    try:
        folder.chmod(0o711)  # mkdtemp makes it 0700: the server's user must be able to traverse it
        server = PostgresServer(
            host=address,
            port=0,
            user=USER,
            password=secrets.token_urlsafe(16),
            folder=folder,
            bin_dir=bin_dir,
            _as_user=as_user,
        )
        for sub in (folder / "data", folder / "socket"):
            sub.mkdir(mode=0o700)
            server._own(sub)
        assert server.log_path is not None
        server.log_path.touch()
        server._own(server.log_path)
        if as_user and server._run("test", "-w", str(folder / "data")).returncode != 0:
            raise ServerError(
                f"the `{OS_USER}` user cannot reach {folder}: every parent folder must be traversable "
                f"(o+x); point TMPDIR elsewhere"
            )
        server.init()
        if allow_subnet is not None:
            assert server.data_dir is not None
            with (server.data_dir / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {allow_subnet} scram-sha-256\n")
        for attempt in range(3):
            server.port = free_port(address)
            try:
                return server.start(timeout_s)
            except ServerError as exc:
                if attempt == 2 or "could not bind" not in str(exc):
                    raise
        raise AssertionError("unreachable")
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL: ``TEST_POSTGRES_DSN`` if set, else a cluster started here."""
    dsn = os.environ.get(ENV_DSN)
    if dsn:
        yield PostgresServer.external(dsn)
        return
    try:
        server = start_postgres_server()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()
        server.remove()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test that used the server gets the tail of its log in its report."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, PostgresServer) and value.managed:
                report.sections.append(
                    (f"postgres log (port {value.port}, {value.log_path})", value.log_tail())
                )
    return report
