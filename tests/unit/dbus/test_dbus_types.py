"""JSON <-> D-Bus values against a signature: accepted forms, every misfit with its path, and round trips."""

from __future__ import annotations

import pytest
from dbus_fast import Message, Variant
from hypothesis import given
from hypothesis import strategies as st

from op_dbus.backends.dbus_types import (
    SignatureMismatch,
    canonical,
    from_json,
    parse_introspection,
    parse_signature,
    to_json,
)


@pytest.mark.parametrize(("sig", "value", "expected"), [
    ("s", "web-01", "web-01"),
    ("b", True, True),
    ("i", -5, -5),
    ("t", 2**64 - 1, 2**64 - 1),
    ("d", 1, 1.0),
    ("as", ["LANG=de_DE.UTF-8"], ["LANG=de_DE.UTF-8"]),
    ("a{su}", {"cpu": 1}, {"cpu": 1}),
    ("a{us}", {"1000": "labuser"}, {1000: "labuser"}),
    ("(so)", ["1", "/org/freedesktop/login1/session/_31"], ["1", "/org/freedesktop/login1/session/_31"]),
    ("ay", [0, 255], b"\x00\xff"),
    ("o", "/", "/"),
    ("g", "a{sv}", "a{sv}"),
])  # fmt: skip
def test_accepted(sig: str, value: object, expected: object) -> None:
    assert from_json(sig, value) == expected


def test_variant() -> None:
    v = from_json("v", {"type": "as", "data": ["a"]})
    assert isinstance(v, Variant) and v.signature == "as" and v.value == ["a"]
    assert to_json("v", v) == {"type": "as", "data": ["a"]}


@pytest.mark.parametrize(("sig", "value", "path", "words"), [
    ("s", 5, "", "expected a string"),
    ("i", True, "", "expected an integer"),  # JSON true is not 1
    ("y", 256, "", "out of range"),
    ("u", -1, "", "out of range"),
    ("b", 1, "", "expected a boolean"),
    ("d", "1.5", "", "expected a number"),
    ("as", ["ok", 3], "[1]", "expected a string"),
    ("a{su}", {"cpu": "x"}, '["cpu"]', "expected an integer"),
    ("a{us}", {"root": "x"}, '["root"]', "not an integer"),
    ("(si)", ["a"], "", "2 field(s)"),
    ("o", "not/a/path", "", "object path"),
    ("v", "plain", "", "variant"),
    ("v", {"type": "i", "data": "x"}, ".data", "expected an integer"),
    ("h", 3, "", "file descriptors"),
])  # fmt: skip
def test_rejected_with_path(sig: str, value: object, path: str, words: str) -> None:
    with pytest.raises(SignatureMismatch) as info:
        from_json(sig, value)
    assert any(p == path and words in m for p, m in info.value.errors), info.value.errors


def test_every_misfit_is_reported() -> None:
    with pytest.raises(SignatureMismatch) as info:
        from_json("a(sb)", [["a", 1], [2, True], ["c", False]])
    assert [p for p, _ in info.value.errors] == ["[0][1]", "[1][0]"]


def test_bad_signature() -> None:
    with pytest.raises(ValueError, match="single complete"):
        parse_signature("ss")
    with pytest.raises(ValueError, match="invalid"):
        parse_signature("a{")


def test_canonical_number() -> None:
    assert canonical("d", 1) == 1.0 and isinstance(canonical("d", 1), float)


json_scalars = st.one_of(st.text(alphabet=st.characters(blacklist_characters="\0", codec="utf-8")), st.booleans())


@given(st.dictionaries(st.text(alphabet=st.characters(blacklist_characters="\0", codec="utf-8"), max_size=8),
                       st.lists(st.integers(min_value=0, max_value=2**32 - 1), max_size=4), max_size=5),
       st.lists(st.integers(min_value=0, max_value=255), max_size=8), json_scalars)
def test_round_trip_through_the_wire(mapping: dict[str, list[int]], raw: list[int], scalar: object) -> None:
    """JSON -> D-Bus -> marshalled bytes -> unmarshalled -> JSON gives back the canonical JSON."""
    sig = "(a{sau}ayv)"
    inner = {"type": "b" if isinstance(scalar, bool) else "s", "data": scalar}
    value = [mapping, raw, inner]
    converted = from_json(sig, value)
    msg = Message(destination="a.b", path="/", interface="a.b", member="M", signature=sig, body=[converted])
    wire = msg._marshall(False)
    import io

    from dbus_fast._private.unmarshaller import Unmarshaller

    back = Unmarshaller(io.BytesIO(wire))
    assert back.unmarshall()
    (decoded,) = back.message.body
    assert to_json(sig, decoded) == value


def test_introspection_xml() -> None:
    xml = """<node>
      <interface name="org.example.A">
        <method name="SetX"><arg name="x" type="s" direction="in"/><arg name="i" type="b" direction="in"/>
          <arg name="r" type="u" direction="out"/></method>
        <property name="X" type="s" access="read"/>
        <property name="Y" type="a{sv}" access="readwrite"/>
      </interface>
      <node name="child"/><node name="other"/>
    </node>"""
    info = parse_introspection(xml, "test")
    iface = info.interfaces["org.example.A"]
    assert iface.methods["SetX"].in_signature == "sb"
    assert not iface.properties["X"].writable and iface.properties["Y"].writable
    assert info.children == ["child", "other"]


def test_introspection_garbage_is_a_backend_error() -> None:
    from op_dbus.errors import BackendError

    with pytest.raises(BackendError, match="unreadable introspection"):
        parse_introspection("<node><interface", "svc /x")


def test_introspection_with_entities_is_refused() -> None:
    from op_dbus.errors import BackendError

    bomb = '<!DOCTYPE node [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><node name="&b;"/>'
    with pytest.raises(BackendError, match="entities"):
        parse_introspection(bomb, "svc /x")


def test_introspection_with_the_standard_doctype() -> None:
    xml = ('<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
           ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n<node><node name="a"/></node>')
    assert parse_introspection(xml, "svc /").children == ["a"]
