"""Item 5b: peak RSS of ``analysis-wrapper run`` over N trivial jobs, as a separate process.

The command is the real CLI (``analysis_wrapper.cli.main``) with the benchmark's trivial analysis served
beside the shipped ones (``python -m benchmarks.trivial run --no-dry-run JOBS``). It is started by a tiny
Python wrapper, which reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` once the command has exited: the
peak RSS of the command's largest process. (Not ``wait4`` on a child of this runner: on Linux a child's
``ru_maxrss`` starts from the RSS of the process it was forked/vforked from, here the large runner.)
The command's RSS is also read from ``/proc`` at every tenth of the jobs, so growth with the number of
jobs shows.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import trivial
from benchmarks.common import REPO_ROOT, Entry, RunOptions, clean_git_repo, compared, entry

_WRAPPER = r"""
import json, resource, subprocess, sys
child = subprocess.Popen(json.loads(sys.argv[1]))
print(f"@@pid {child.pid}", flush=True)
code = child.wait()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print("@@rusage " + json.dumps({"returncode": code, "peak_rss_kb": peak}), flush=True)
"""


def _rss_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def run(options: RunOptions) -> list[Entry]:
    n = options.sizes.rss_jobs
    root = Path(options.workdir) / "memory_run"
    repo = clean_git_repo(root / "code_repo")
    jobs = trivial.write_trivial_jobs(root / "trivial", n)
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DOCDB_URI", "ANALYSIS_BUCKET", "ALLOW_DIRTY", "GIT_COMMIT", "AWS_ENDPOINT_URL"}
    }
    env.update(
        {
            "DAGSTER_HOME": str(root / "home"),
            "RESULTS_ROOT": str(root / "results"),
            "DRY_RUN_ROOT": str(root / "dry_run"),
            "DRY_RUN": "0",
            "CODE_REPOSITORY": str(repo),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
        }
    )
    cmd = [sys.executable, "-m", "benchmarks.trivial", "run", "--no-dry-run", str(jobs)]
    options.log(f"  analysis-wrapper run over {n} trivial jobs, as a subprocess")
    early_at = max(1, n // 10)
    early_rss: list[int] = []
    series: list[tuple[int, int]] = []  # (jobs done, RSS kB) at every tenth of the jobs
    lines: list[str] = []
    usage: dict[str, Any] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, json.dumps(cmd)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    assert proc.stdout is not None
    pid = None
    done = 0
    for line in proc.stdout:
        if line.startswith("@@pid "):
            pid = int(line.split()[1])
            continue
        if line.startswith("@@rusage "):
            usage = json.loads(line[len("@@rusage ") :])
            continue
        lines.append(line.rstrip("\n"))
        if line.startswith("done "):
            done += 1
            rss = _rss_kb(pid) if pid is not None and done % early_at == 0 else None
            if rss is not None:
                series.append((done, rss))
                if done == early_at:
                    early_rss.append(rss)
    proc.wait(timeout=60)
    seconds = time.perf_counter() - start
    summary = next((line for line in reversed(lines) if " job(s): " in line), "(no summary)")
    code = usage.get("returncode", proc.returncode)
    if code != 0 or f"job(s): {n} done" not in summary or "peak_rss_kb" not in usage:
        tail = " | ".join(lines[-3:])
        raise RuntimeError(f"analysis-wrapper run exited {code}: {summary} ({tail})")
    peak_mb = usage["peak_rss_kb"] / 1024
    entries = [
        entry(
            f"{n} trivial jobs: analysis-wrapper run (subprocess), peak RSS",
            peak_mb,
            "MB",
            note=f"{seconds:.1f} s wall, start-up included",
        )
    ]
    if early_rss:
        growth_kb = (peak_mb - early_rss[0] / 1024) / max(n - early_at, 1) * 1024
        entries.append(
            compared(
                f"{n} trivial jobs: peak RSS vs RSS after {early_at} jobs",
                peak_mb,
                "MB",
                f"RSS after {early_at} jobs",
                early_rss[0] / 1024,
                "value ratio",
                note=f"growth {growth_kb:.1f} kB per job; RSS (MB) by jobs done: "
                + ", ".join(f"{d}: {kb / 1024:.0f}" for d, kb in series),
            )
        )
    entries.append(
        entry(f"{n} trivial jobs: analysis-wrapper run (subprocess), throughput", n / seconds, "jobs/s")
    )
    return entries
