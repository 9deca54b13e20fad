"""The dispatch inbox, local and S3 (a real S3 server on 127.0.0.1): listing only what is new, and
moves that never lose or overwrite a file."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from analysis_wrapper.inbox import (
    REASON_SUFFIX,
    Inbox,
    InboxFile,
    LocalInbox,
    S3Inbox,
    is_job_file_name,
    open_inbox,
)
from analysis_wrapper.s3_uri import S3Uri
from analysis_wrapper_tests.s3_servers import S3Endpoint


def test_job_file_names() -> None:
    assert is_job_file_name("0b6d.json")
    assert not is_job_file_name(".0b6d.json")  # a dispatcher's temporary name
    assert not is_job_file_name("0b6d.json.tmp") and not is_job_file_name("notes.txt")


def split_inbox_uri(uri: str) -> tuple[str, str]:
    inbox = S3Uri.from_setting(uri, "DISPATCH_INBOX")
    return inbox.bucket, inbox.key


def test_split_inbox_uri_and_open() -> None:
    assert split_inbox_uri("s3://bucket/some/prefix/") == ("bucket", "some/prefix")
    assert split_inbox_uri("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="names no bucket"):
        split_inbox_uri("s3://")
    assert isinstance(open_inbox("relative/inbox"), LocalInbox)
    assert isinstance(open_inbox("s3://b/p", lambda: object()), S3Inbox)


def _write(path: Path, text: str = "{}", age: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))
    return path


def test_local_listing_is_oldest_first_bounded_and_blind_to_what_was_handled(tmp_path: Path) -> None:
    inbox = LocalInbox(tmp_path / "inbox")
    assert inbox.list_files("", 10) == [] and (tmp_path / "inbox").is_dir()  # created when missing
    root = tmp_path / "inbox"
    _write(root / "c.json", age=10)
    _write(root / "a.json", age=30)
    _write(root / "b.json", age=20)
    _write(root / ".hidden.json")
    _write(root / "x.json.tmp")
    for i in range(50):  # the history: never listed
        _write(root / "registered" / "echo" / f"{i}.json")
        _write(root / "rejected" / f"{i}.json")
    _write(root / "echo" / "e.json")
    files = inbox.list_files("", 10)
    assert [f.name for f in files] == ["a.json", "b.json", "c.json"]
    assert all(f.folder == "" and f.uri == str(root / f.name) for f in files)
    assert inbox.listed == 3 + 2 + 3  # 3 job files, 2 other files, 3 folders: not their contents
    assert [f.name for f in inbox.list_files("", 2)] == ["a.json", "b.json"]
    assert [(f.folder, f.name) for f in inbox.list_files("echo", 10)] == [("echo", "e.json")]
    assert inbox.list_files("nothing-here", 10) == []
    assert inbox.read(files[0]) == b"{}" and inbox.reads == 1
    assert inbox.base_folder(files[0]) == root


def test_local_moves_never_overwrite(tmp_path: Path) -> None:
    inbox = LocalInbox(tmp_path)
    first = InboxFile("", "j.json", str(_write(tmp_path / "j.json", "first")), 0.0)
    target = inbox.registered_uri(first, "echo")
    assert target == str(tmp_path / "registered" / "echo" / "j.json")
    assert inbox.accept(first, "echo", target)
    # The same name dropped again: registered beside the first, not over it.
    second = InboxFile("", "j.json", str(_write(tmp_path / "j.json", "second")), 0.0)
    other = inbox.registered_uri(second, "echo")
    assert other != target and inbox.accept(second, "echo", other)
    assert sorted(p.read_text() for p in (tmp_path / "registered" / "echo").iterdir()) == ["first", "second"]
    assert not inbox.accept(second, "echo", other)  # gone already: False, no error

    routed = InboxFile("", "r.json", str(_write(tmp_path / "r.json", "r")), 0.0)
    assert inbox.route(routed, "other") and (tmp_path / "other" / "r.json").read_text() == "r"

    for text in ("bad 1", "bad 2"):
        bad = InboxFile("", "bad.json", str(_write(tmp_path / "bad.json", text)), 0.0)
        where = inbox.reject(bad, f"reason for {text}", "echo_inbox_sensor")
        assert where is not None and Path(where).read_text() == text
        reason = Path(where + REASON_SUFFIX).read_text()
        assert reason.startswith(f"reason for {text}\n") and "by echo_inbox_sensor" in reason
        assert f"file: {tmp_path / 'bad.json'}" in reason
    assert len(list((tmp_path / "rejected").glob("bad*.json"))) == 2
    gone = InboxFile("", "gone.json", str(tmp_path / "gone.json"), 0.0)
    assert inbox.reject(gone, "x", "me") is None
    assert not list((tmp_path / "rejected").glob("gone*"))


@pytest.fixture
def s3_inbox(moto_s3: S3Endpoint) -> tuple[S3Inbox, str, S3Endpoint]:
    bucket = moto_s3.new_bucket("inbox")
    return S3Inbox(moto_s3.client(), f"s3://{bucket}/dispatch/"), bucket, moto_s3


def test_s3_listing_skips_the_subfolders_and_stops_at_the_limit(
    s3_inbox: tuple[S3Inbox, str, S3Endpoint],
) -> None:
    inbox, bucket, server = s3_inbox
    client = server.client()
    for name in ("b.json", "a.json", "notes.txt", ".tmp.json"):
        client.put_object(Bucket=bucket, Key=f"dispatch/{name}", Body=b"{}")
    for i in range(30):
        client.put_object(Bucket=bucket, Key=f"dispatch/registered/echo/{i}.json", Body=b"{}")
        client.put_object(Bucket=bucket, Key=f"dispatch/rejected/{i}.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="dispatch/echo/e.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="dispatchother/x.json", Body=b"{}")
    assert inbox.uri == f"s3://{bucket}/dispatch"
    files = inbox.list_files("", 10)
    assert sorted(f.name for f in files) == ["a.json", "b.json"]
    assert inbox.listed == 4 + 3  # four objects and three folders, not the 60 files below them
    assert {f.uri for f in files} == {f"s3://{bucket}/dispatch/a.json", f"s3://{bucket}/dispatch/b.json"}
    assert [f.name for f in inbox.list_files("echo", 10)] == ["e.json"]
    assert len(inbox.list_files("", 1)) == 1
    assert inbox.read(files[0]) == b"{}"
    with pytest.raises(FileNotFoundError):
        inbox.read(InboxFile("", "nope.json", f"s3://{bucket}/dispatch/nope.json", 0.0))


def test_s3_moves_copy_then_remove(s3_inbox: tuple[S3Inbox, str, S3Endpoint]) -> None:
    inbox, bucket, server = s3_inbox
    client = server.client()

    def put(name: str, body: bytes) -> InboxFile:
        client.put_object(Bucket=bucket, Key=f"dispatch/{name}", Body=body)
        return InboxFile("", name, f"s3://{bucket}/dispatch/{name}", 0.0)

    good = put("g.json", b"good")
    target = inbox.registered_uri(good, "echo")
    assert target == f"s3://{bucket}/dispatch/registered/echo/g.json"
    assert inbox.accept(good, "echo", target)
    assert not inbox.accept(good, "echo", target)  # already moved
    assert inbox.route(put("r.json", b"r"), "other")
    assert inbox.route(put("r.json", b"r2"), "other")  # a second r.json is kept beside the first
    for body in (b"bad", b"bad again"):
        where = inbox.reject(put("bad.json", body), "invalid JSON", "echo_inbox_sensor")
        assert where is not None
    objects = server.objects(bucket)
    assert "dispatch/g.json" not in objects and "dispatch/bad.json" not in objects
    assert client.get_object(Bucket=bucket, Key="dispatch/registered/echo/g.json")["Body"].read() == b"good"
    assert len([k for k in objects if k.startswith("dispatch/other/r")]) == 2
    rejected = sorted(k for k in objects if k.startswith("dispatch/rejected/"))
    assert len(rejected) == 4 and "dispatch/rejected/bad.json.reason.txt" in rejected
    reason = client.get_object(Bucket=bucket, Key="dispatch/rejected/bad.json.reason.txt")["Body"].read()
    assert reason.startswith(b"invalid JSON") and f"s3://{bucket}/dispatch/bad.json".encode() in reason
    assert (
        inbox.reject(InboxFile("", "gone.json", f"s3://{bucket}/dispatch/gone.json", 0.0), "x", "me") is None
    )
    assert not [k for k in server.objects(bucket) if "gone" in k]


def test_inbox_is_an_interface() -> None:
    with pytest.raises(TypeError):
        Inbox()  # type: ignore[abstract]


# ---- bad entries (issue 11, items 3, 6, 7 and 8) ------------------------------------------------
def test_entries_that_are_no_job_files_are_listed_and_refused_unread(tmp_path: Path) -> None:
    from analysis_wrapper.job_bytes import BadJobFileError

    root = tmp_path / "inbox"
    inbox = LocalInbox(root, max_bytes=100)
    _write(root / "ok.json", "{}")
    (root / "loop.json").symlink_to("loop.json")  # ln -s loop.json loop.json
    (root / "dangling.json").symlink_to(root / "nowhere")
    (root / "dir.json").mkdir()
    os.mkfifo(root / "fifo.json")
    with (root / "big.json").open("wb") as f:
        f.truncate(10_000)
    files = {f.name: f for f in inbox.list_files("", 100)}
    assert sorted(files) == ["big.json", "dangling.json", "dir.json", "fifo.json", "loop.json", "ok.json"]
    assert inbox.read(files["ok.json"]) == b"{}"
    expected = {
        "loop.json": "symbolic link loop",
        "dangling.json": "symbolic link to nothing",
        "dir.json": "a directory, not a regular file",
        "fifo.json": "a FIFO",
        "big.json": "10,000 bytes, larger than MAX_JOB_FILE_BYTES (100)",
    }
    for name, problem in expected.items():
        with pytest.raises(BadJobFileError, match=re.escape(problem)):
            inbox.read(files[name])
        where = inbox.reject(files[name], problem, "me")  # each can be quarantined, whatever it is
        assert where is not None and os.path.lexists(where) and Path(where + REASON_SUFFIX).is_file()
    assert sorted(f.name for f in inbox.list_files("", 100)) == ["ok.json"]


def test_a_file_where_an_analysis_folder_belongs_is_listed_as_a_bad_entry(tmp_path: Path) -> None:
    inbox = LocalInbox(tmp_path)
    _write(tmp_path / "isi_violations", "not a folder")
    (blocked,) = inbox.list_files("isi_violations", 10)
    assert blocked.folder == "" and blocked.name == "isi_violations" and blocked.problem
    assert "named like the inbox folder of analysis 'isi_violations'" in blocked.problem
    assert inbox.reject(blocked, blocked.problem, "me") == str(tmp_path / "rejected" / "isi_violations")
    assert inbox.list_files("isi_violations", 10) == []
    routed = InboxFile("", "r.json", str(_write(tmp_path / "r.json")), 0.0)
    assert inbox.route(routed, "isi_violations") and (tmp_path / "isi_violations" / "r.json").is_file()
    # The history folders too: a file in their way is moved aside (never deleted), then they are made.
    _write(tmp_path / "registered", "in the way")
    job = InboxFile("", "j.json", str(_write(tmp_path / "j.json")), 0.0)
    assert inbox.accept(job, "echo", inbox.registered_uri(job, "echo"))
    assert (tmp_path / "registered" / "echo" / "j.json").is_file()
    (aside,) = tmp_path.glob("registered.*.in-the-way")
    assert aside.read_text() == "in the way"


@pytest.mark.parametrize("length", [200, 249, 255])
def test_names_too_long_for_a_reason_file_are_shortened_never_lost(tmp_path: Path, length: int) -> None:
    inbox = LocalInbox(tmp_path)
    name = "n" * (length - len(".json")) + ".json"
    for text in ("first", "second"):  # the second meets the first's name in rejected/
        bad = InboxFile("", name, str(_write(tmp_path / name, text)), 0.0)
        where = inbox.reject(bad, "broken", "me")
        assert where is not None and Path(where).read_text() == text
        assert len(Path(where + REASON_SUFFIX).name.encode()) <= 255
        assert f"file: {tmp_path / name}" in Path(where + REASON_SUFFIX).read_text()  # the original name
    for text in ("one", "two"):
        good = InboxFile("", name, str(_write(tmp_path / name, text)), 0.0)
        target = inbox.registered_uri(good, "echo")
        assert inbox.accept(good, "echo", target) and Path(target).read_text() == text
    assert not (tmp_path / name).exists()
    assert len(list((tmp_path / "rejected").iterdir())) == 4


def test_a_file_rewritten_between_read_and_move_is_kept_as_read_and_its_new_content_waits(
    tmp_path: Path,
) -> None:
    inbox = LocalInbox(tmp_path)
    path = _write(tmp_path / "race.json", '{"version": 1}')
    (file,) = inbox.list_files("", 10)
    content = inbox.read(file)
    path.write_text('{"version": 2}')  # a writer rewrites it in place
    target = inbox.registered_uri(file, "echo")
    assert inbox.accept(file, "echo", target, content)
    assert Path(target).read_bytes() == content  # what was registered
    assert path.read_text() == '{"version": 2}' and inbox.rewritten == 1  # left for the next tick
    (again,) = inbox.list_files("", 10)
    where = inbox.reject(again, "x", "me", inbox.read(again))
    assert where is not None and Path(where).read_text() == '{"version": 2}' and inbox.rewritten == 1


def test_s3_files_over_the_limit_are_refused_without_a_get(s3_inbox: tuple[S3Inbox, str, S3Endpoint]) -> None:
    from analysis_wrapper.job_bytes import BadJobFileError

    _inbox, bucket, server = s3_inbox
    inbox = S3Inbox(server.client(), f"s3://{bucket}/dispatch", max_bytes=1000)
    client = server.client()
    client.put_object(Bucket=bucket, Key="dispatch/big.json", Body=b" " * 5000)
    client.put_object(Bucket=bucket, Key="dispatch/ok.json", Body=b"{}")
    files = {f.name: f for f in inbox.list_files("", 10)}
    with pytest.raises(BadJobFileError, match="5,000 bytes, larger than MAX_JOB_FILE_BYTES"):
        inbox.read(files["big.json"])
    assert inbox.reads == 0
    # Grown after the listing: the read stops one byte past the limit.
    client.put_object(Bucket=bucket, Key="dispatch/ok.json", Body=b" " * 50_000)
    with pytest.raises(BadJobFileError, match="larger than MAX_JOB_FILE_BYTES"):
        inbox.read(files["ok.json"])


def test_s3_file_rewritten_between_read_and_move_is_kept_as_read(
    s3_inbox: tuple[S3Inbox, str, S3Endpoint],
) -> None:
    inbox, bucket, server = s3_inbox
    client = server.client()
    client.put_object(Bucket=bucket, Key="dispatch/race.json", Body=b'{"version": 1}')
    (file,) = inbox.list_files("", 10)
    content = inbox.read(file)
    client.put_object(Bucket=bucket, Key="dispatch/race.json", Body=b'{"version": 2}')
    target = inbox.registered_uri(file, "echo")
    assert inbox.accept(file, "echo", target, content) and inbox.rewritten == 1
    kept = client.get_object(Bucket=bucket, Key="dispatch/registered/echo/race.json")["Body"].read()
    assert kept == content
    waiting = client.get_object(Bucket=bucket, Key="dispatch/race.json")["Body"].read()
    assert waiting == b'{"version": 2}'
    # Unchanged: a plain move.
    (again,) = inbox.list_files("", 10)
    assert inbox.accept(again, "echo", inbox.registered_uri(again, "echo"), inbox.read(again))
    assert "dispatch/race.json" not in server.objects(bucket) and inbox.rewritten == 1


def _read_as_nobody(root: Path) -> str:
    """List, read and (when refused) reject the inbox's one file in a forked child that runs as
    ``nobody`` when we are root (root reads any file); what the child did comes back through a pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            from analysis_wrapper.job_bytes import BadJobFileError

            inbox = LocalInbox(root)
            (entry,) = inbox.list_files("", 10)
            try:
                inbox.read(entry)
                said = "read"
            except BadJobFileError as exc:
                said = str(inbox.reject(entry, f"{entry.uri}: {exc}", "test"))
            os.write(write_end, said.encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        said = pipe.read().decode()
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, said
    return said


def test_an_unreadable_file_is_quarantined_not_warned_about_forever() -> None:
    """chmod 000: as root every file is readable, so the reader drops to ``nobody`` (as a deployed daemon
    runs unprivileged); not as root, the test's own user cannot read it either."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="unreadable-", dir="/tmp"))  # /tmp/pytest-of-root is 0700
    try:
        root.chmod(0o777)
        secret = _write(root / "secret.json", '{"s3_location": ["x"]}')
        secret.chmod(0)
        assert _read_as_nobody(root) == str(root / "rejected" / "secret.json")
        reason = (root / "rejected" / ("secret.json" + REASON_SUFFIX)).read_text()
        assert "cannot be opened: Permission denied" in reason and f"file: {secret}" in reason
        assert not secret.exists() and (root / "rejected" / "secret.json").stat().st_mode & 0o777 == 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
