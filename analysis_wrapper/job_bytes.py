"""Reading one job file: only a regular file, never more than ``MAX_JOB_FILE_BYTES``, never blocking.

Job files are small JSON documents. A 1 GiB file dropped into the inbox used to be read whole (1.46 GB
resident for one tick); a FIFO named ``x.json`` would block the reader forever; a directory, a symlink
loop or a dangling link failed on every tick. Here the size is checked on the open file before any byte
is read, the read itself stops one byte past the limit (a file growing meanwhile), and every entry that
is no regular file is refused with :class:`BadJobFileError`, whose message says what the entry is.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from analysis_wrapper.errors import AnalysisWrapperError

DEFAULT_MAX_JOB_FILE_BYTES = 1 << 20

TRANSIENT_ERRNOS = frozenset(
    {
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.EAGAIN,
        errno.EINTR,
        errno.EIO,
        errno.ESTALE,
        errno.ETIMEDOUT,
    }
)
"""Read errors that say nothing about the file itself: it is kept for a later try, not refused."""


class BadJobFileError(AnalysisWrapperError, ValueError):
    """An inbox entry or job path that can never be a job (too large, not a regular file, unreadable)."""


def describe_mode(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "an entry of unknown type"


def too_large(size: int, max_bytes: int) -> str:
    return (
        f"file is {size:,} bytes, larger than MAX_JOB_FILE_BYTES ({max_bytes:,}): job files are small "
        "JSON documents; not read"
    )


def read_job_bytes(path: Path | str, max_bytes: int = DEFAULT_MAX_JOB_FILE_BYTES) -> bytes:
    """The bytes of the regular file ``path``.

    Raises :class:`FileNotFoundError` when nothing is there (a dangling symlink is a
    :class:`BadJobFileError`), :class:`BadJobFileError` for what can never be a job, and
    :class:`OSError` with an errno of :data:`TRANSIENT_ERRNOS` for what may pass.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise BadJobFileError(f"a symbolic link to nothing ({os.readlink(path)!r})") from None
        raise
    except OSError as exc:
        if exc.errno in TRANSIENT_ERRNOS:
            raise
        if exc.errno == errno.ELOOP:
            raise BadJobFileError("a symbolic link loop") from None
        raise BadJobFileError(f"cannot be opened: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadJobFileError(f"{describe_mode(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes:
            raise BadJobFileError(too_large(info.st_size, max_bytes))
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            try:
                chunk = os.read(fd, min(left, 1 << 20))
            except OSError as exc:
                if exc.errno in TRANSIENT_ERRNOS:
                    raise
                raise BadJobFileError(f"cannot be read: {exc.strerror}") from None
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise BadJobFileError(too_large(len(data), max_bytes) + " (it grew while being read)")
        return data
    finally:
        os.close(fd)
