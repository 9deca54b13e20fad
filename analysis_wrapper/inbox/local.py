"""The dispatch inbox in a local (or mounted) folder: moves are renames, never overwriting a file."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from analysis_wrapper.inbox.base import (
    REASON_SUFFIX,
    REGISTERED,
    REJECTED,
    Inbox,
    InboxFile,
    is_job_file_name,
    reason_text,
    unique_name,
)
from analysis_wrapper.job_bytes import (
    DEFAULT_MAX_JOB_FILE_BYTES,
    BadJobFileError,
    describe_mode,
    read_job_bytes,
)
from analysis_wrapper.safe_paths import fit_name

log = logging.getLogger(__name__)


class LocalInbox(Inbox):
    """A local folder (created when missing)."""

    local = True

    def __init__(self, root: Path | str, max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES) -> None:
        self.root = Path(root).absolute()
        self.uri = str(self.root)
        self.listed = 0
        self.reads = 0
        self.rewritten = 0
        self.max_bytes = max_bytes
        self._moved: list[tuple[InboxFile, Path, bytes]] = []

    def _folder(self, folder: str) -> Path:
        return self.root / folder if folder else self.root

    def _blocked_folder(self, folder: str) -> InboxFile | None:
        """An entry that is not a folder where the analysis folder ``folder`` belongs (a file named
        ``isi_violations``, a symlink loop): listed as a bad entry of the top level, so it is moved away."""
        where = self._folder(folder)
        if not folder or where.is_dir() or not os.path.lexists(where):
            return None
        info = where.lstat()
        self.listed += 1
        problem = (
            f"{describe_mode(info.st_mode)} named like the inbox folder of analysis {folder!r}, which must "
            f"be a folder: moved here so that {folder} job files can be dropped into {where}/"
        )
        return InboxFile("", folder, str(where), info.st_mtime, problem=problem)

    def list_files(self, folder: str, limit: int) -> list[InboxFile]:
        blocked = self._blocked_folder(folder)
        if blocked is not None:
            return [blocked]
        where = self._folder(folder)
        found: list[tuple[float, str]] = []
        try:
            with os.scandir(where) as entries:
                for item in entries:
                    self.listed += 1
                    if not is_job_file_name(item.name):
                        continue
                    try:
                        # lstat: a symlink loop or a FIFO is listed too, and refused when read.
                        found.append((item.stat(follow_symlinks=False).st_mtime, item.name))
                    except FileNotFoundError:
                        continue
        except FileNotFoundError:
            if not folder:
                self.root.mkdir(parents=True, exist_ok=True)
            return []
        found.sort()
        return [InboxFile(folder, name, str(where / name), mtime) for mtime, name in found[:limit]]

    def read(self, file: InboxFile) -> bytes:
        self.reads += 1
        return read_job_bytes(file.uri, self.max_bytes)

    def base_folder(self, file: InboxFile) -> Path:
        return self._folder(file.folder)

    def _free_target(self, folder: Path, name: str) -> Path:
        target = folder / fit_name(name)
        return folder / unique_name(name) if os.path.lexists(target) else target

    def _make_folder(self, folder: Path) -> None:
        """``folder`` (under the inbox) as a folder: whatever non-folder blocks it is moved aside."""
        for part in [*reversed(folder.relative_to(self.root).parents[:-1]), folder.relative_to(self.root)]:
            path = self.root / part
            if os.path.lexists(path) and not path.is_dir():
                aside = path.with_name(unique_name(path.name) + ".in-the-way")
                os.replace(path, aside)
                log.warning("inbox: %s is not a folder but must be one: moved it to %s", path, aside)
        folder.mkdir(parents=True, exist_ok=True)

    def registered_uri(self, file: InboxFile, analysis: str) -> str:
        return str(self._free_target(self.root / REGISTERED / analysis, file.name))

    def _move(self, file: InboxFile, target: Path, content: bytes | None = None) -> Path | None:
        self._make_folder(target.parent)
        if os.path.lexists(target):  # taken since we chose it: never overwrite
            target = self._free_target(target.parent, target.name)
        try:
            os.replace(file.uri, target)
        except FileNotFoundError:
            return None
        if content is not None:
            self._keep_as_read(file, target, content)
            self._moved.append((file, target, content))
        return target

    def recheck(self) -> None:
        """A writer whose ``open(path, "w")`` had looked the file up before the move, but truncated it only
        after the check that followed the move (it was descheduled inside the call), writes into the moved
        file later: checked again here, after the whole tick's moves, the same way."""
        moved, self._moved = self._moved, []
        for file, target, content in moved:
            self._keep_as_read(file, target, content)

    def _keep_as_read(self, file: InboxFile, target: Path, content: bytes) -> None:
        """After the move: if ``target`` is not what was read (a writer rewrote the file in place between
        the read and the move), move it back to the inbox for the next tick and write what was read."""
        try:
            now: bytes | None = read_job_bytes(target, len(content))
        except (BadJobFileError, OSError):
            now = None
        if now == content:
            return
        back = self._free_target(Path(file.uri).parent, file.name)
        os.replace(target, back)
        partial = target.with_name(f".partial-{uuid.uuid4().hex}")
        partial.write_bytes(content)
        os.replace(partial, target)
        self.rewritten += 1
        log.warning(
            "inbox: %s changed while it was read: kept as read in %s, new content in %s",
            file.uri,
            target,
            back,
        )

    def accept(self, file: InboxFile, analysis: str, target: str, content: bytes | None = None) -> bool:
        return self._move(file, Path(target), content) is not None

    def route(self, file: InboxFile, analysis: str) -> bool:
        return self._move(file, self._free_target(self.root / analysis, file.name)) is not None

    def reject(self, file: InboxFile, reason: str, who: str, content: bytes | None = None) -> str | None:
        folder = self.root / REJECTED
        self._make_folder(folder)
        target = self._free_target(folder, file.name)
        while os.path.lexists(folder / (target.name + REASON_SUFFIX)):
            target = folder / unique_name(file.name)
        reason_file = folder / (target.name + REASON_SUFFIX)
        # The reason first: a crash in between leaves a reason without its file, never a lost file.
        reason_file.write_text(reason_text(file, reason, who))
        moved = self._move(file, target, content)
        if moved is None:
            reason_file.unlink(missing_ok=True)
            return None
        if moved != target:  # its name was taken meanwhile: the reason follows the file
            os.replace(reason_file, folder / (moved.name + REASON_SUFFIX))
        return str(moved)
