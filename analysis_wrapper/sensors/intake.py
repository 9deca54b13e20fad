"""Intake: the inbox sensor's step that turns new inbox files into registered jobs.

At most ``SENSOR_MAX_FILES_PER_TICK`` new files of the analysis (``<inbox>/<analysis>/`` and the top
level; see :mod:`analysis_wrapper.inbox`) are read; bad ones are rejected into ``rejected/`` with
their reason, top-level files of other analyses are handed to their folder, and the rest go through
the one registration path (:func:`~analysis_wrapper.registration.register_jobs`) and move to
``registered/``. Their partition keys are collected for the tick's ``SensorResult``.

No entry stops the tick: what can never be a job (too large, not a regular file, a file where an
analysis folder belongs) is rejected unread; a file that fails in any unforeseen way is rejected with
the error; only a read error that may pass (EIO, too many open files, an S3 hiccup) leaves the file
for the next tick. What is registered or rejected is kept exactly as it was read (see
:meth:`~analysis_wrapper.inbox.Inbox.accept`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from analysis_wrapper.analysis import Analysis
from analysis_wrapper.inbox import RESERVED_FOLDERS, Inbox, InboxFile
from analysis_wrapper.job_bytes import BadJobFileError
from analysis_wrapper.job_file import AnalysisJob, JobFileError, parse_job_text, resolve_relative_locations
from analysis_wrapper.make_job import build_analysis_job, select_analysis
from analysis_wrapper.registration import register_jobs
from analysis_wrapper.settings import SensorSettings
from analysis_wrapper.store.base import Store


@dataclass
class Intake:
    """One tick's reading of the inbox for one analysis."""

    analysis: Analysis[Any, Any]
    served: Mapping[str, Analysis[Any, Any]]
    store: Store
    inbox: Inbox
    config: SensorSettings
    counts: Counter[str]
    logger: Any
    add_keys: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.analysis.name

    def _parse(self, file: InboxFile, data: bytes) -> AnalysisJob | str:
        """The job of ``file`` for this analysis, or the analysis it belongs to instead (to route)."""
        dispatch = resolve_relative_locations(parse_job_text(data, file.uri), self.inbox.base_folder(file))
        if file.folder:
            named = dispatch.analysis_name
            if named is not None and named != file.folder:
                raise JobFileError(
                    file.uri,
                    "analysis_code.parameters.analysis_name",
                    f"names analysis {named!r}, but the file is in the inbox folder of {file.folder!r}",
                )
            spec = self.analysis
        else:
            spec = select_analysis(dispatch, self.served, file.uri)
            if spec.name != self.name:
                return spec.name
        return build_analysis_job(dispatch, spec, source=file.uri)

    def _read_all(self, files: Sequence[InboxFile]) -> list[bytes | BaseException]:
        def read(file: InboxFile) -> bytes | BaseException:
            try:
                return self.inbox.read(file)
            except Exception as exc:  # gone (another sensor took it) or unreadable: decided below
                return exc

        return self._map(read, files)

    def _map(self, action: Any, items: Sequence[Any]) -> list[Any]:
        """``action`` on every item: in parallel where the inbox allows it (S3)."""
        if self.inbox.parallelism > 1 and len(items) > 1:
            with ThreadPoolExecutor(max_workers=self.inbox.parallelism) as pool:
                return list(pool.map(action, items))
        return [action(item) for item in items]

    def _each(self, action: Any, items: Sequence[Any]) -> list[Any]:
        """:meth:`_map` of ``action``; a failure is logged and counted, never raised,
        so one file that cannot be moved does not stop the tick (it is simply seen again)."""

        def guarded(item: Any) -> Any:
            try:
                return action(item)
            except Exception as exc:
                self.logger.warning(f"{self.name}: cannot move {item[0].uri}: {exc}")
                self.counts["unmovable"] += 1
                return None

        return self._map(guarded, items)

    def read(self, deadline: float) -> None:
        limit = self.config.max_files_per_tick
        files = self.inbox.list_files(self.name, limit) if self.name not in RESERVED_FOLDERS else []
        if len(files) < limit:
            files += self.inbox.list_files("", limit - len(files))
        ready: list[tuple[InboxFile, AnalysisJob, bytes]] = []
        to_reject: list[tuple[InboxFile, str, bytes | None]] = []
        to_route: list[tuple[InboxFile, str]] = []
        for file in [f for f in files if f.problem]:  # known bad from the listing: never read
            self.counts["new"] += 1
            to_reject.append((file, f"{file.uri}: {file.problem}", None))
        files = [f for f in files if not f.problem]
        chunk = 100 if self.inbox.parallelism == 1 else self.inbox.parallelism * 8
        for start in range(0, len(files), chunk):
            if time.monotonic() > deadline:
                self.counts["left for next tick"] += len(files) - start
                break
            batch = files[start : start + chunk]
            for file, data in zip(batch, self._read_all(batch), strict=True):
                if isinstance(data, FileNotFoundError):
                    continue  # another sensor dealt with it
                if isinstance(data, BadJobFileError):
                    self.counts["new"] += 1
                    to_reject.append((file, f"{file.uri}: {data}", None))
                    continue
                if isinstance(data, BaseException):
                    self.logger.warning(
                        f"{self.name}: cannot read {file.uri} (tried again next tick): {data}"
                    )
                    self.counts["unreadable"] += 1
                    continue
                self.counts["new"] += 1
                try:
                    parsed = self._parse(file, data)
                except JobFileError as exc:
                    young = self.inbox.local and time.time() - file.modified < self.config.settle_s
                    if young and exc.problem.startswith(("invalid JSON", "not UTF-8")):
                        self.counts["new"] -= 1
                        self.counts["deferred"] += 1  # may be half-written: look again next tick
                        continue
                    to_reject.append((file, str(exc), data))
                    continue
                except Exception as exc:  # never let one file stop every tick: keep it, with the reason
                    to_reject.append(
                        (file, f"{file.uri}: cannot be used as a job: {type(exc).__name__}: {exc}", data)
                    )
                    continue
                if isinstance(parsed, str):
                    to_route.append((file, parsed))
                else:
                    ready.append((file, parsed, data))
        rewritten = self.inbox.rewritten
        self._reject(to_reject)
        self._route(to_route)
        self._register(ready)
        self.inbox.recheck()
        self.counts["rewritten while read"] += self.inbox.rewritten - rewritten

    def _reject(self, items: list[tuple[InboxFile, str, bytes | None]]) -> None:
        who = self.analysis.sensor_name

        def reject(item: tuple[InboxFile, str, bytes | None]) -> str | None:
            file, reason, data = item
            return self.inbox.reject(file, reason, who, data)

        for (_file, reason, _data), where in zip(items, self._each(reject, items), strict=True):
            if where is not None:
                self.counts["rejected"] += 1
                self.logger.warning(f"{self.name}: REJECTED {reason} -> moved to {where}")

    def _route(self, items: list[tuple[InboxFile, str]]) -> None:
        moved = self._each(lambda item: self.inbox.route(*item), items)
        self.counts["routed"] += sum(1 for ok in moved if ok)
        self.counts["new"] -= len(items)

    def _register(self, ready: list[tuple[InboxFile, AnalysisJob, bytes]]) -> None:
        if not ready:
            return
        jobs: dict[str, AnalysisJob] = {}
        targets: list[tuple[InboxFile, str, bytes]] = []
        for file, job, data in ready:
            target = self.inbox.registered_uri(file, self.name)
            targets.append((file, target, data))
            jobs.setdefault(job.partition_key, job.model_copy(update={"source": target}))
        registration = register_jobs(list(jobs.values()), self.store, analyses={self.name: self.analysis})
        outcome, recorded = registration.outcome, registration.recorded
        fresh = set(outcome.added) | set(outcome.changed)
        self.counts["already done"] += len(recorded)
        self.counts["registered"] += sum(1 for k in fresh if k not in recorded)
        self.counts["known"] += sum(1 for k in outcome.unchanged if k not in recorded)
        # Every key is (re-)added, so a registry that outlived its Dagster instance heals itself.
        self.add_keys.extend(jobs)
        self._each(lambda item: self.inbox.accept(item[0], self.name, item[1], item[2]), targets)
