"""Tests for canonical JSON, the job fingerprint and the partition key (DESIGN.md, "The fingerprint")."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import random
import re
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from analysis_wrapper.analyses.isi_violations import IsiViolationsParams
from analysis_wrapper.analyses.isi_violations import analysis as isi_analysis
from analysis_wrapper.fingerprint import (
    PARTITION_KEY_MAX_LENGTH,
    CanonicalJSONError,
    canonical_json,
    fingerprint,
    partition_key,
)
from analysis_wrapper.job_file import DispatchJob
from analysis_wrapper.make_job import build_analysis_job

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

GOLDEN_ANALYSIS = "isi_violations"
GOLDEN_INPUTS = ["s3://bucket/asset_a/file.nwb"]
GOLDEN_PARAMS: dict[str, Any] = {
    "isi_threshold_ms": 1.5,
    "min_isi_ms": 0.0,
    "analysis_name": "isi_violations",
    "analysis_tag": None,
    "isi_violations_cutoff": 0.5,
}
GOLDEN_VERSION = "1.0.0"
GOLDEN_LABEL = "ecephys_700001_2026-01-15_10-00-00"

# Computed once with the code as designed; a change of the canonical form must break these.
GOLDEN_FINGERPRINT = "109407385b5bdecbad25e52d939e469538b3ee860840d3fa13901767d4e2019d"
GOLDEN_KEY = "80a42974bf5f4f6cab64"
GOLDEN_LABELLED_KEY = "ecephys_700001_2026-01-15_10-00-00-80a42974bf5f4f6cab64"
# The canonical text the golden fingerprint is the sha256 of, written out by hand.
GOLDEN_CANONICAL_TEXT = (
    '{"analysis":"isi_violations","inputs":["s3://bucket/asset_a/file.nwb"],'
    '"parameters":{"analysis_name":"isi_violations","analysis_tag":null,"isi_threshold_ms":1.5,'
    '"isi_violations_cutoff":0.5,"min_isi_ms":0},"version":"1.0.0"}'
)


# --------------------------------------------------------------------------------------------- golden


def test_golden_fingerprint() -> None:
    assert fingerprint(GOLDEN_ANALYSIS, GOLDEN_INPUTS, GOLDEN_PARAMS, GOLDEN_VERSION) == GOLDEN_FINGERPRINT


def test_golden_fingerprint_is_sha256_of_the_documented_canonical_form() -> None:
    expected = hashlib.sha256(GOLDEN_CANONICAL_TEXT.encode("utf-8")).hexdigest()
    assert expected == GOLDEN_FINGERPRINT
    assert fingerprint(GOLDEN_ANALYSIS, GOLDEN_INPUTS, GOLDEN_PARAMS, GOLDEN_VERSION) == expected


def test_golden_partition_keys() -> None:
    assert partition_key(GOLDEN_ANALYSIS, GOLDEN_INPUTS, GOLDEN_PARAMS) == GOLDEN_KEY
    assert partition_key(GOLDEN_ANALYSIS, GOLDEN_INPUTS, GOLDEN_PARAMS, GOLDEN_LABEL) == GOLDEN_LABELLED_KEY


def test_golden_values_match_the_isi_defaults_in_json_mode() -> None:
    """The golden parameters are exactly what the isi_violations model dumps for its defaults."""
    validated = IsiViolationsParams().model_dump(mode="json")
    assert validated == GOLDEN_PARAMS
    assert fingerprint(GOLDEN_ANALYSIS, GOLDEN_INPUTS, validated, GOLDEN_VERSION) == GOLDEN_FINGERPRINT
    assert partition_key(GOLDEN_ANALYSIS, GOLDEN_INPUTS, validated, GOLDEN_LABEL) == GOLDEN_LABELLED_KEY


def test_golden_canonical_json() -> None:
    value = {
        "b": {"z": 1.0, "a": [0.1, -0.0, 1e-7, 2.5]},
        "a": 12345678901234567890,
        "u": 'Grüße, 日本 \u2013 ✓ "q"',
        "n": None,
        "t": True,
        "neg": -3.25,
        "big": 1e20,
        "nested_list": [{"y": 2, "x": [False]}],
    }
    assert canonical_json(value) == (
        '{"a":12345678901234567890,"b":{"a":[0.1,0,1e-07,2.5],"z":1},"big":100000000000000000000,'
        '"n":null,"neg":-3.25,"nested_list":[{"x":[false],"y":2}],"t":true,'
        '"u":"Grüße, 日本 \u2013 ✓ \\"q\\""}'
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (1e-7, "1e-07"),
        (True, "true"),
        (1, "1"),
        ((1, 2.0), "[1,2]"),
        ("ü", '"ü"'),
    ],
)
def test_canonical_scalar_forms(value: Any, text: str) -> None:
    assert canonical_json(value) == text


# ------------------------------------------------------------------------------------------ key order


def test_key_order_does_not_change_fingerprint_or_key() -> None:
    params_a = {
        "threshold": 1.5,
        "window": {"start": 0.0, "stop": 10.0, "channels": [{"id": 1, "gain": 2.0}, {"gain": 3.0, "id": 2}]},
        "name": "x",
    }
    params_b = {
        "name": "x",
        "window": {"channels": [{"gain": 2.0, "id": 1}, {"id": 2, "gain": 3.0}], "stop": 10.0, "start": 0.0},
        "threshold": 1.5,
    }
    assert list(params_a) != list(params_b)
    assert fingerprint("a", ["s3://b/x"], params_a, "1") == fingerprint("a", ["s3://b/x"], params_b, "1")
    assert partition_key("a", ["s3://b/x"], params_a, "L") == partition_key("a", ["s3://b/x"], params_b, "L")
    assert canonical_json(params_a) == canonical_json(params_b)


def test_list_order_does_change_fingerprint() -> None:
    assert fingerprint("a", ["x", "y"], {}, "1") != fingerprint("a", ["y", "x"], {}, "1")
    assert fingerprint("a", ["x"], {"l": [1, 2]}, "1") != fingerprint("a", ["x"], {"l": [2, 1]}, "1")


# ------------------------------------------------------------------------------------------ hypothesis

finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.none() | st.booleans() | st.integers() | finite_floats | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
param_dicts = st.dictionaries(st.text(max_size=12), json_values, max_size=6)
input_lists = st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=4)
names = st.text(min_size=1, max_size=20)
versions = st.text(min_size=1, max_size=12)


def reordered(value: Any, rnd: random.Random) -> Any:
    """A deep copy of ``value`` with the key order of every dict shuffled."""
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: reordered(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [reordered(v, rnd) for v in value]
    return copy.deepcopy(value)


@settings(max_examples=60, deadline=None)
@given(name=names, inputs=input_lists, params=param_dicts, version=versions, rnd=st.randoms())
def test_equal_jobs_have_equal_fingerprints(
    name: str, inputs: list[str], params: dict[str, Any], version: str, rnd: random.Random
) -> None:
    other = reordered(params, rnd)
    assert other == params
    assert fingerprint(name, list(inputs), other, version) == fingerprint(name, inputs, params, version)
    assert partition_key(name, list(inputs), other) == partition_key(name, inputs, params)
    assert canonical_json(other) == canonical_json(params)


@settings(max_examples=60, deadline=None)
@given(
    inputs=input_lists,
    params=param_dicts,
    index=st.integers(min_value=0),
    new_location=st.text(min_size=1, max_size=40),
)
def test_changing_one_input_changes_fingerprint_and_key(
    inputs: list[str], params: dict[str, Any], index: int, new_location: str
) -> None:
    i = index % len(inputs)
    assume(inputs[i] != new_location)
    changed = list(inputs)
    changed[i] = new_location
    assert fingerprint("a", changed, params, "1") != fingerprint("a", inputs, params, "1")
    assert partition_key("a", changed, params) != partition_key("a", inputs, params)


@settings(max_examples=80, deadline=None)
@given(
    params=param_dicts.filter(bool),
    index=st.integers(min_value=0),
    new_value=json_values,
    rnd=st.randoms(),
)
def test_changing_one_parameter_value_changes_fingerprint_and_key(
    params: dict[str, Any], index: int, new_value: Any, rnd: random.Random
) -> None:
    key = sorted(params)[index % len(params)]
    # Python equality is the notion of "the same value" (1 == 1.0 == True, 0.0 == -0.0, dict order).
    assume(new_value != params[key])
    changed = reordered(params, rnd)
    changed[key] = new_value
    assert fingerprint("a", ["x"], changed, "1") != fingerprint("a", ["x"], params, "1")
    assert partition_key("a", ["x"], changed, "L") != partition_key("a", ["x"], params, "L")


@settings(max_examples=60, deadline=None)
@given(params=param_dicts, new_key=st.text(max_size=12), value=json_values)
def test_adding_a_parameter_changes_fingerprint(params: dict[str, Any], new_key: str, value: Any) -> None:
    assume(new_key not in params)
    changed = {**params, new_key: value}
    assert fingerprint("a", ["x"], changed, "1") != fingerprint("a", ["x"], params, "1")
    assert partition_key("a", ["x"], changed) != partition_key("a", ["x"], params)


@settings(max_examples=60, deadline=None)
@given(name=names, inputs=input_lists, params=param_dicts, version=versions, new_version=versions)
def test_changing_the_version_changes_fingerprint_but_not_key(
    name: str, inputs: list[str], params: dict[str, Any], version: str, new_version: str
) -> None:
    assume(version != new_version)
    assert fingerprint(name, inputs, params, new_version) != fingerprint(name, inputs, params, version)
    # The key is the hash of the same payload without the version (so no version can change it).
    payload = {"analysis": name, "inputs": list(inputs), "parameters": params}
    suffix = hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()[:20]
    assert partition_key(name, inputs, params) == suffix


def test_new_analysis_version_keeps_the_partition_key() -> None:
    """Through the real job builder: a re-versioned analysis gets a new fingerprint, the same key."""
    new_version = dataclasses.replace(isi_analysis, version="2.0.0")
    dispatch = DispatchJob(s3_location=GOLDEN_INPUTS, asset_name=[GOLDEN_LABEL])
    old_job = build_analysis_job(dispatch, isi_analysis)
    new_job = build_analysis_job(dispatch, new_version)
    assert old_job.fingerprint == GOLDEN_FINGERPRINT
    assert new_job.fingerprint != old_job.fingerprint
    assert new_job.partition_key == old_job.partition_key == GOLDEN_LABELLED_KEY


@settings(max_examples=40, deadline=None)
@given(name=names, other_name=names, params=param_dicts)
def test_changing_the_analysis_changes_fingerprint_and_key(
    name: str, other_name: str, params: dict[str, Any]
) -> None:
    assume(name != other_name)
    assert fingerprint(other_name, ["x"], params, "1") != fingerprint(name, ["x"], params, "1")
    assert partition_key(other_name, ["x"], params) != partition_key(name, ["x"], params)


@settings(max_examples=80, deadline=None)
@given(label=st.one_of(st.none(), st.text(), st.text(min_size=60, max_size=400)), params=param_dicts)
def test_partition_key_is_always_dagster_safe(label: str | None, params: dict[str, Any]) -> None:
    key = partition_key("a", ["s3://bucket/x"], params, label)
    assert KEY_PATTERN.match(key), key
    assert len(key) <= PARTITION_KEY_MAX_LENGTH
    # The hash part is always there, whatever the label: two jobs never share a key by their label.
    assert key.endswith(partition_key("a", ["s3://bucket/x"], params))


@pytest.mark.parametrize(
    "label",
    [
        "a,b,c",
        "x|y|z",
        '{"asset": ["a", "b"], "n": 1}',
        "日本語のラベル",
        "ecephys 700001 / 2026-01-15 10:00:00",
        "x" * 1000,
        "," * 100,
        "...---___",
        "-leading.and.trailing-",
        "a" * 42 + ".-_" + "b" * 30,
        "\n\t\x00",
        "",
    ],
)
def test_partition_key_for_awkward_labels(label: str) -> None:
    key = partition_key("a", ["s3://bucket/x"], {"p": 1}, label)
    assert KEY_PATTERN.match(key), key
    suffix = partition_key("a", ["s3://bucket/x"], {"p": 1})
    assert re.fullmatch(r"[0-9a-f]{20}", suffix)
    assert key.endswith(suffix)
    if key != suffix:
        prefix = key[: -len(suffix) - 1]
        assert key[-len(suffix) - 1] == "-"
        assert prefix and prefix[0].isalnum() and prefix[-1].isalnum()


def test_readable_label_is_kept() -> None:
    key = partition_key("a", ["x"], {}, "asset_a.v2")
    assert key.startswith("asset_a.v2-")


# ------------------------------------------------------------------------------------------ NaN / inf


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_parameter_raises_with_path(bad: float) -> None:
    params = {"ok": 1.0, "outer": {"inner": [0.5, bad]}}
    with pytest.raises(CanonicalJSONError, match=re.escape("outer.inner[1]")):
        fingerprint("a", ["x"], params, "1")
    with pytest.raises(CanonicalJSONError, match=re.escape("outer.inner[1]")):
        partition_key("a", ["x"], params, "L")
    with pytest.raises(CanonicalJSONError, match=re.escape("outer.inner[1]")):
        canonical_json(params)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_top_level_parameter_names_it(bad: float) -> None:
    with pytest.raises(CanonicalJSONError, match=r"parameters\.isi_threshold_ms"):
        fingerprint("a", ["x"], {"isi_threshold_ms": bad}, "1")


def test_canonical_error_is_a_value_error() -> None:
    assert issubclass(CanonicalJSONError, ValueError)
    with pytest.raises(CanonicalJSONError, match="not JSON data"):
        canonical_json({"p": object()})
    with pytest.raises(CanonicalJSONError, match="not a string"):
        canonical_json({1: "x"})
