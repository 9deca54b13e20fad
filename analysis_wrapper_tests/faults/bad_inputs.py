"""Malformed job files and inbox entries, for the fault suite's bad-input section.

Each :class:`BadInput` is one thing a careless or hostile dispatcher can leave in a job folder, and
``expect`` is what its rejection must say (the field, as ``field 'x'``, or the problem for a file that
has no field yet: broken JSON, a FIFO). :func:`bad_inputs` lists them all (over 100) for one input
file; :func:`hostile_valid_jobs` lists jobs that are valid but full of strings that would lead out of
their folders if anything used them as paths. Both the CLI and the sensor get the same files.
"""

from __future__ import annotations

import codecs
import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ANALYSIS = "echo"
"""The analysis the jobs are for (``analysis_wrapper_tests.sample_analyses.echo``)."""

ESCAPE = "escape"
"""Name of the folder, beside the test's folders, that hostile strings point at: it must never appear."""


@dataclass(frozen=True)
class BadInput:
    name: str
    """The entry's name in the job folder (``*.json``, except for entries in an analysis folder's place)."""
    expect: str
    """Text the rejection (CLI line, reason file) must hold besides the file's path."""
    content: bytes = b""
    kind: str = "file"
    """``file``, ``fifo``, ``dir``, ``loop`` (symlink to itself), ``dangling`` (symlink to nothing),
    ``sparse`` (a 1 GiB sparse file)."""
    sensor_only: bool = False
    """Only an inbox entry (a folder named ``x.json``, a file where the analysis folder belongs): the CLI
    walks folders and only takes ``*.json`` names."""

    def create(self, folder: Path) -> Path:
        path = folder / self.name
        if self.kind == "file":
            path.write_bytes(self.content)
        elif self.kind == "fifo":
            os.mkfifo(path)
        elif self.kind == "dir":
            path.mkdir()
            (path / "inside.json").write_text("{}")  # the sensor must not look inside
        elif self.kind == "loop":
            path.symlink_to(path.name)
        elif self.kind == "dangling":
            path.symlink_to(folder / "nothing-here.json")
        elif self.kind == "sparse":
            with path.open("wb") as f:
                f.truncate(1 << 30)
        else:
            raise ValueError(self.kind)
        return path


def valid_job(input_path: str, **params: Any) -> dict[str, Any]:
    """A valid AIND job for :data:`ANALYSIS` over one local input."""
    return {
        "s3_location": [input_path],
        "asset_name": ["asset"],
        "docdb_record_id": ["00000000-0000-0000-0000-000000000001"],
        "file_location": None,
        "distributed_parameters": None,
        "group_metadata": None,
        "query": None,
        "analysis_code": {
            "url": "https://example.org/code",
            "parameters": {"analysis_name": ANALYSIS, **params},
        },
    }


def _text(job: Any) -> bytes:
    return json.dumps(job).encode("utf-8")


def changed(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``base`` with the dotted ``path`` set to ``value`` (or removed, for :data:`_DELETE`)."""
    job = copy.deepcopy(base)
    *parents, last = path.split(".")
    here = job
    for part in parents:
        if not isinstance(here.get(part), dict):
            here[part] = {}
        here = here[part]
    if value is _DELETE:
        here.pop(last, None)
    else:
        here[last] = value
    return job


_DELETE = object()


def bad_inputs(input_path: str, escape_to: Path) -> list[BadInput]:
    """Every malformed entry, over a valid job reading ``input_path``; ``escape_to`` is where the
    hostile locations lead (an absolute path that must never be written)."""
    base = valid_job(input_path)
    good = _text(base)
    far = "../" * 40 + str(escape_to).lstrip("/")
    out: list[BadInput] = []

    def raw(name: str, expect: str, content: bytes | str, **kw: Any) -> None:
        out.append(
            BadInput(f"{name}.json", expect, content.encode() if isinstance(content, str) else content, **kw)
        )

    def field(name: str, path: str, value: Any, expect: str) -> None:
        raw(name, expect, _text(changed(base, path, value)))

    # Broken JSON, empty, binary.
    raw("empty", "invalid JSON", b"")
    raw("blank", "invalid JSON", b"  \n\t ")
    raw("open-brace", "invalid JSON", "{")
    raw("trailing-comma", "invalid JSON", '{"s3_location": ["x"],}')
    raw("single-quotes", "invalid JSON", "{'s3_location': ['x']}")
    raw("comment", "line 1", "// a job\n" + good.decode())
    raw("unterminated", "invalid JSON", '{"s3_location": ["x')
    raw("truncated", "invalid JSON", good[: len(good) // 2])
    raw("two-documents", "Extra data", good + b"\n" + good)
    raw("python-literals", "invalid JSON", good.decode().replace("null", "None"))
    raw("binary", "not UTF-8", bytes(range(255, 0, -1)))
    raw("nul-bytes", "invalid JSON", b"\x00" * 64)
    raw("gzip", "not UTF-8", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xab\xae\x05\x00")
    raw("png", "not UTF-8", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    raw(
        "latin-1",
        "not UTF-8",
        _text(changed(base, "asset_name", ["café"])).replace(b"caf\\u00e9", b"caf\xe9"),
    )
    raw("raw-latin-1", "not UTF-8", good.replace(b'"asset"', '"Ångström"'.encode("latin-1")))
    # Other encodings.
    raw("utf-16-bom", "not UTF-8", good.decode().encode("utf-16"))
    raw("utf-16-le", "invalid JSON", good.decode().encode("utf-16-le"))
    raw("utf-16-be", "invalid JSON", good.decode().encode("utf-16-be"))
    raw("utf-32", "not UTF-8", good.decode().encode("utf-32"))
    raw("utf-8-bom", "byte order mark", codecs.BOM_UTF8 + good)
    # Not an object.
    raw("array-empty", "must be a JSON object, got list", "[]")
    raw("array-of-job", "must be a JSON object, got list", b"[" + good + b"]")
    raw("string", "must be a JSON object, got str", '"a job"')
    raw("number", "must be a JSON object, got int", "42")
    raw("null", "must be a JSON object, got NoneType", "null")
    raw("true", "must be a JSON object, got bool", "true")
    raw("empty-object", "field 's3_location': Field required", "{}")
    # Wrong types, field by field.
    field("s3-missing", "s3_location", _DELETE, "field 's3_location': Field required")
    field("s3-string", "s3_location", input_path, "field 's3_location'")
    field("s3-empty-list", "s3_location", [], "field 's3_location'")
    field("s3-number", "s3_location", [1], "field 's3_location[0]'")
    field("s3-null", "s3_location", None, "field 's3_location'")
    field("s3-nested", "s3_location", [[input_path]], "field 's3_location[0]'")
    field("s3-object", "s3_location", {"a": input_path}, "field 's3_location'")
    field("asset-name-string", "asset_name", "asset", "field 'asset_name'")
    field("asset-name-number", "asset_name", [7], "field 'asset_name[0]'")
    field("record-id-object", "docdb_record_id", {}, "field 'docdb_record_id'")
    field("record-id-bool", "docdb_record_id", [True], "field 'docdb_record_id[0]'")
    field("file-location-string", "file_location", input_path, "field 'file_location'")
    field("file-location-null-item", "file_location", [None], "field 'file_location[0]'")
    field("distributed-list", "distributed_parameters", [], "field 'distributed_parameters'")
    field("distributed-string", "distributed_parameters", "scale=2", "field 'distributed_parameters'")
    field("group-metadata-list", "group_metadata", ["a"], "field 'group_metadata'")
    field("query-number", "query", 5, "field 'query'")
    field("analysis-code-string", "analysis_code", "echo", "field 'analysis_code'")
    field("analysis-code-list", "analysis_code", [], "field 'analysis_code'")
    field("parameters-list", "analysis_code.parameters", ["echo"], "field 'analysis_code.parameters'")
    field("parameters-string", "analysis_code.parameters", "echo", "field 'analysis_code.parameters'")
    field("input-data-string", "analysis_code.input_data", "x", "field 'analysis_code.input_data'")
    field("code-url-number", "analysis_code.url", 5, "field 'analysis_code.url'")
    field("container-list", "analysis_code.container", [], "field 'analysis_code.container'")
    # Per-asset lists of different lengths (the case first).
    mixed = changed(changed(base, "asset_name", ["a", "b", "c"]), "docdb_record_id", ["r1", "r2"])
    raw("lengths-issue", "field 'asset_name'", _text(changed(mixed, "file_location", ["/x", "/y"])))
    field("lengths-names", "asset_name", ["a", "b"], "field 'asset_name': has 2 entries")
    field("lengths-ids", "docdb_record_id", ["r1", "r2", "r3"], "field 'docdb_record_id': has 3 entries")
    field("files-repeated", "file_location", [input_path, input_path], "field 'file_location[1]': repeats")
    field("files-outside", "file_location", ["/elsewhere/x.nwb"], "field 'file_location[0]': '/elsewhere")
    # Schemes that are not s3:// or file://, and misspelt ones.
    for scheme in ("http", "https", "ftp", "gs", "sftp", "javascript"):
        field(f"scheme-{scheme}", "s3_location", [f"{scheme}://example.org/a.nwb"], f"scheme {scheme}://")
    field("scheme-file-location", "file_location", ["http://example.org/a.nwb"], "field 'file_location[0]'")
    field("scheme-upper-s3", "s3_location", ["S3://bucket/a.nwb"], "not an s3:// URI")
    field("scheme-s3-no-slashes", "s3_location", ["s3:bucket/a.nwb"], "not an s3:// URI")
    field("scheme-file-host", "s3_location", ["file://otherhost/data/a.nwb"], "host 'otherhost'")
    # Locations leading out of folders.
    field("s3-leading-slash", "s3_location", [f"s3://inputs/{escape_to}"], "starts with '/'")
    field("s3-dot-dot", "s3_location", [f"s3://inputs/trav/{far}"], "'..' path segment")
    field("s3-dot", "s3_location", ["s3://inputs/a/./b.nwb"], "'.' path segment")
    field("s3-double-slash", "s3_location", ["s3://inputs/a//b.nwb"], "empty path segment")
    field("s3-bucket-dot-dot", "s3_location", ["s3://../x.nwb"], "bucket name")
    field("s3-no-bucket", "s3_location", ["s3:///x.nwb"], "bucket name")
    field("file-location-dot-dot", "file_location", [f"s3://inputs/{far}"], "field 'file_location[0]'")
    field("nul-in-path", "s3_location", [input_path + "\x00.nwb"], "NUL")
    # Empty strings.
    field("empty-location", "s3_location", [""], "field 's3_location[0]': is empty")
    field("blank-location", "s3_location", ["   "], "field 's3_location[0]': is empty")
    field("empty-file-location", "file_location", [""], "field 'file_location[0]': is empty")
    field("empty-asset-name", "asset_name", [""], "field 'asset_name[0]': is empty")
    field("empty-record-id", "docdb_record_id", [""], "field 'docdb_record_id[0]': is empty")
    # Numbers JSON does not have, repeated keys, absurd integers.
    scale = '"analysis_name": "echo"'
    raw(
        "nan",
        "field 'analysis_code.parameters.scale'",
        good.decode().replace(scale, scale + ', "scale": NaN'),
    )
    raw(
        "infinity",
        "Infinity is not a JSON value",
        good.decode().replace(scale, scale + ', "scale": Infinity'),
    )
    raw(
        "minus-infinity",
        "field 'distributed_parameters.scale'",
        good.decode().replace(
            '"distributed_parameters": null', '"distributed_parameters": {"scale": -Infinity}'
        ),
    )
    raw("overflow", "out of range", good.decode().replace(scale, scale + ', "scale": 1e999'))
    raw("duplicate-top-key", "duplicate key 's3_location'", b'{"s3_location": ["a"], ' + good[1:])
    raw(
        "duplicate-parameter",
        "field 'analysis_code.parameters': duplicate key 'scale'",
        good.decode().replace(scale, scale + ', "scale": 1, "scale": 2'),
    )
    raw("huge-integer", "5000 digits", good.decode().replace(scale, scale + ', "scale": ' + "7" * 5000))
    # Deep nesting (990 levels: the CLI crashed with RecursionError) and beyond what json can parse.
    deep = '{"a": ' * 990 + "1" + "}" * 990
    raw(
        "deep-990",
        "field 'group_metadata.a.a.a",
        good.decode().replace('"group_metadata": null', f'"group_metadata": {deep}'),
    )
    deep65 = '{"a": ' * 65 + "1" + "}" * 65
    raw(
        "deep-65",
        "nested deeper than 64 levels",
        good.decode().replace('"group_metadata": null', f'"group_metadata": {deep65}'),
    )
    raw("deep-arrays", "nested deeper than 64 levels", "[" * 200_000 + "]" * 200_000)
    # Analyses that are not served.
    field("unknown-analysis", "analysis_code.parameters.analysis_name", "nope", "no analysis named 'nope'")
    field("analysis-path", "analysis_code.parameters.analysis_name", "../../etc/passwd", "no analysis named")
    field("analysis-number", "analysis_code.parameters.analysis_name", 5, "no analysis named '5'")
    field(
        "analysis-distributed",
        "distributed_parameters",
        {"analysis_name": "other"},
        "no analysis named 'other'",
    )
    # Parameter names echo does not take, hostile ones too: refused (issue 19; they used to be ignored,
    # and these two were valid jobs).
    field(
        "misspelt-parameter",
        "distributed_parameters",
        {"scael": 2.0},
        "field 'distributed_parameters.scael': not a parameter of echo (did you mean scale?)",
    )
    field(
        "hostile-parameters",
        "analysis_code.parameters",
        {"analysis_name": ANALYSIS, "scale": 4.0, far: far, "results_dir": far},
        "not a parameter of echo",
    )
    field(
        "hostile-distributed",
        "distributed_parameters",
        {"output": str(escape_to), "scale": 5.0},
        "field 'distributed_parameters.output': not a parameter of echo",
    )
    # Absurd parameters.
    for name, value, expect in (
        ("scale-negative", -1, "greater than 0"),
        ("scale-zero", 0, "greater than 0"),
        ("scale-text", "abc", "valid number"),
        ("scale-list", [1], "valid number"),
        ("scale-null", None, "valid number"),
        ("scale-infinity-text", "Infinity", "parameters.scale: inf has no canonical JSON form"),
        ("fail-maybe", "maybe", "valid boolean"),
    ):
        key = "fail" if name.startswith("fail") else "scale"
        raw(name, expect, _text(changed(base, f"analysis_code.parameters.{key}", value)))
    # Huge files: rejected before a byte is read.
    padded = changed(base, "group_metadata", {"pad": "x" * (2 << 20)})
    raw("big-2mib", "larger than MAX_JOB_FILE_BYTES", _text(padded))
    out.append(
        BadInput("sparse-1gib.json", "1,073,741,824 bytes, larger than MAX_JOB_FILE_BYTES", kind="sparse")
    )
    # Entries that are not files.
    out.append(BadInput("fifo.json", "a FIFO (named pipe), not a regular file", kind="fifo"))
    out.append(BadInput("loop.json", "a symbolic link loop", kind="loop"))
    out.append(BadInput("dangling.json", "a symbolic link to nothing", kind="dangling"))
    out.append(BadInput("folder.json", "a directory, not a regular file", kind="dir", sensor_only=True))
    out.append(
        BadInput(ANALYSIS, f"named like the inbox folder of analysis '{ANALYSIS}'", b"{}", sensor_only=True)
    )
    # Names the file system barely takes (249 characters: the reason file's name would be too long).
    raw("l" * 244, "invalid JSON", b"{ broken")
    names = [b.name for b in out]
    assert len(names) == len(set(names)), "two bad inputs share a name"
    return out


def hostile_valid_jobs(input_path: str, escape_to: Path) -> dict[str, dict[str, Any]]:
    """Valid jobs whose user-supplied strings name places outside every folder: they must run, and
    write only where the project writes (result folders named by fingerprint, the inbox's history)."""
    far = "../" * 40 + str(escape_to).lstrip("/")
    base = valid_job(input_path)

    def scaled(scale: float) -> dict[str, Any]:  # each job its own fingerprint
        return changed(base, "analysis_code.parameters.scale", scale)

    return {
        "hostile-asset-name.json": changed(scaled(2.0), "asset_name", [far]),
        "absolute-asset-name.json": changed(scaled(3.0), "asset_name", [str(escape_to)]),
        "hostile-metadata.json": changed(
            changed(scaled(6.0), "group_metadata", {"path": far, "s3": f"s3://x/{far}"}), "query", far
        ),
        "hostile-record-id.json": changed(scaled(7.0), "docdb_record_id", [far]),
        "x y;$(touch escape) `id` ü.json": changed(scaled(8.0), "asset_name", ["spaces and ; $(shell)"]),
        ("h" * 244 + ".json"): scaled(9.0),
    }
