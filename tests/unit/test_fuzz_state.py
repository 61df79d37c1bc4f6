"""Hostile documents never reach a traceback: whatever the bytes, the loader returns a document or raises
StateFileError (exit 2) with a message, and nothing else."""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from op_dbus.errors import StateFileError
from op_dbus.state import parse_text, validate_document

# CI runs a fixed sequence (reproducible results); a developer's run explores new inputs each time.
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=os.environ.get("CI") == "true")

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(
    st.text(max_size=12), kids, max_size=4), max_leaves=30)

# Documents that look like ours, so the fuzzer reaches the plugin models and not only the top level.
unit_state = st.dictionaries(st.sampled_from(["active_state", "enabled", "masked", "bogus"]),
                             json_scalars | st.sampled_from(["active", "inactive"]), max_size=4)
units = st.dictionaries(st.text(max_size=20) | st.sampled_from(["a.service", "b.socket", "x"]), unit_state | json_values,
                        max_size=4)
interfaces = st.lists(st.fixed_dictionaries({"name": st.text(max_size=20) | json_scalars},
                                            optional={"type": st.sampled_from(["veth", "ovs-bridge", "nope"]) | json_scalars,
                                                      "mtu": st.integers() | json_scalars,
                                                      "ipv4": json_values}), max_size=3)
near_documents = st.fixed_dictionaries(
    {"version": st.sampled_from([1, 2, "1", True, None])},
    optional={"plugins": st.fixed_dictionaries({}, optional={
        "systemd": st.fixed_dictionaries({}, optional={"units": units}) | json_values,
        "net": st.fixed_dictionaries({}, optional={"interfaces": interfaces}) | json_values}),
        "probes": st.lists(st.dictionaries(st.sampled_from(["tcp", "dbus_name", "unit_active", "timeout"]),
                                           json_scalars, max_size=3), max_size=3) | json_values})


def load(value: Any) -> None:
    try:
        validate_document(value, "fuzz.json")
    except StateFileError as e:
        assert e.problems and all(p.message for p in e.problems)


@SETTINGS
@given(json_values)
def test_any_json_value(value: Any) -> None:
    load(value)


@SETTINGS
@given(near_documents)
def test_documents_that_look_like_ours(value: Any) -> None:
    load(value)


@SETTINGS
@given(st.binary(max_size=400))
def test_any_bytes(data: bytes) -> None:
    for name in ("f.json", "f.yaml"):
        try:
            load(parse_text(data, name))
        except StateFileError as e:
            assert str(e)


@SETTINGS
@given(near_documents)
def test_serialised_documents_with_noise(value: Any) -> None:
    text = json.dumps(value).encode()
    for data in (text, text[:-1], text + b"}", text.replace(b":", b"::", 1)):
        with contextlib.suppress(StateFileError):
            load(parse_text(data, "f.json"))


def test_huge_numbers_and_long_strings() -> None:
    for data in (b'{"version": 1e999}', b'{"version": ' + b"9" * 5000 + b"}", b'{"version": "' + b"x" * 100000 + b'"}',
                 b'{"version": 1, "plugins": {"net": {"interfaces": [{"name": "a", "mtu": 1e400}]}}}'):
        try:
            load(parse_text(data, "f.json"))
        except StateFileError as e:
            assert "version" in str(e) or "JSON" in str(e) or "mtu" in str(e)


def test_enormous_file_is_refused_before_parsing() -> None:
    try:
        parse_text(b" " * (17 * 1024 * 1024), "f.json")
    except StateFileError as e:
        assert "limit" in str(e)
    else:
        raise AssertionError("a 17 MiB document was accepted")
