"""Canonical JSON: the fast path must produce exactly the rfc8785 package's bytes; big integers become strings."""

from __future__ import annotations

import hashlib
import math

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from op_dbus.ledger import CanonicalError, canonical, canonical_state
from op_dbus.ledger.canonical import INT_MAX, INT_MIN

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
keys = st.text(max_size=6) | st.sampled_from(["a", "b", "\u00e9", "\uffff", "\U0001f600", "\ue000", "A", ""])
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5), max_leaves=30
)


def _strings_for_big_ints(value):
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if INT_MIN <= value <= INT_MAX else str(value)
    if isinstance(value, dict):
        return {k: _strings_for_big_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings_for_big_ints(v) for v in value]
    return value


def _has_lone_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_matches_rfc8785(value) -> None:
    if _has_lone_surrogate(value):
        with pytest.raises(CanonicalError):
            canonical(value)
        return
    assert canonical(value) == rfc8785.dumps(_strings_for_big_ints(value))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=4), st.integers(0, 3))
def test_state_is_composed_canonically(plugins, version) -> None:
    if _has_lone_surrogate(plugins):
        return
    state = {"version": version, "plugins": plugins}
    data, per_plugin = canonical_state(state)
    assert data == rfc8785.dumps(_strings_for_big_ints(state))
    for name, section in plugins.items():
        assert per_plugin[name] == hashlib.sha256(rfc8785.dumps(_strings_for_big_ints(section))).hexdigest()


def test_known_bytes() -> None:
    value = {"b": [1, 2.5, 1e21, 1e-7, -0.0, "\u20ac\n"], "a": {"z": None, "y": True}, "\u00e9": 1, "c": 1.0}
    assert canonical(value) == '{"a":{"y":true,"z":null},"b":[1,2.5,1e+21,1e-7,0,"\u20ac\\n"],"c":1,"\u00e9":1}'.encode()


def test_integers_beyond_2_53_become_strings() -> None:
    assert canonical({"max": 2**64 - 1, "ok": 2**53 - 1, "neg": -(2**60)}) == (
        b'{"max":"18446744073709551615","neg":"-1152921504606846976","ok":9007199254740991}'
    )
    assert canonical([2**53]) == b'["9007199254740992"]'


@pytest.mark.parametrize("bad", [math.nan, math.inf, {1: "int key"}, {"a": {1, 2}}, b"bytes", object()])
def test_unrepresentable_values_are_refused(bad) -> None:
    with pytest.raises(CanonicalError):
        canonical(bad)


def test_tuples_are_arrays() -> None:
    assert canonical({"a": (1, 2)}) == b'{"a":[1,2]}'
