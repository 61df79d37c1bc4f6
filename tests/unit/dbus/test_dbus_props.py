"""The generic D-Bus plugin without a bus: the section's shape and error paths, diff, setter tables, dump."""

from __future__ import annotations

from typing import Any

import pytest

from op_dbus.errors import StateFileError
from op_dbus.plugins.dbus import (
    WELL_KNOWN_SETTERS,
    DbusPropertiesPlugin,
    DbusState,
    object_name,
    referenced,
    setter_for,
    substitute,
)
from op_dbus.state import validate_document

HOST = "org.freedesktop.hostname1"
HOST_PATH = "/org/freedesktop/hostname1"


def section(props: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {HOST: {HOST_PATH: {HOST: props}}, **extra}


def state(props: dict[str, Any], **extra: Any) -> DbusState:
    return DbusState.model_validate(section(props, **extra))


def test_the_documented_example_validates() -> None:
    doc = validate_document({"version": 1, "plugins": {"dbus": section({"StaticHostname": "web-01"})}}, "t")
    assert doc.sections["dbus"].services[HOST][HOST_PATH][HOST] == {"StaticHostname": "web-01"}  # type: ignore[attr-defined]


@pytest.mark.parametrize(("value", "path"), [
    ({"bad name": {}}, 'plugins.dbus["bad name"]'),
    ({HOST: {"no-slash": {}}}, 'plugins.dbus["org.freedesktop.hostname1"].no-slash'),
    ({HOST: {"/a": {"noDots": {}}}}, 'plugins.dbus["org.freedesktop.hostname1"]["/a"].noDots'),
    ({HOST: {"/a": {"a.b": []}}}, 'plugins.dbus["org.freedesktop.hostname1"]["/a"]["a.b"]'),
    ({"setters": {"a.b": {"P": {"args": []}}}}, 'plugins.dbus.setters["a.b"].P.method'),
    ({"setters": {"a.b": {"P": {"method": "M", "extra": 1}}}}, 'plugins.dbus.setters["a.b"].P.extra'),
])  # fmt: skip
def test_shape_errors_carry_the_files_path(value: dict[str, Any], path: str) -> None:
    with pytest.raises(StateFileError) as info:
        validate_document({"version": 1, "plugins": {"dbus": value}}, "t")
    assert path in [p.path for p in info.value.problems], info.value.problems


def test_diff_only_what_differs_and_numbers_compare_by_value() -> None:
    desired = DbusState.model_validate({"a.b": {"/": {"a.b": {"R": 1, "S": "x", "B": True, "L": [1, 2]}}}})
    current = DbusState.model_validate({"a.b": {"/": {"a.b": {"R": 1.0, "S": "x", "B": 1, "L": [1, 2], "Z": 0}}}})
    plan = DbusPropertiesPlugin().diff(desired, current)
    # B: JSON true is not the integer 1; Z is not declared and so never touched
    assert [(c.object, c.before, c.after) for c in plan] == [("a.b / a.b.B", {"B": 1}, {"B": True})]


def test_unreadable_property_is_a_change() -> None:
    plan = DbusPropertiesPlugin().diff(state({"StaticHostname": "web-01"}), state({}))
    assert [(c.object, c.action, c.before) for c in plan] == [(f"{HOST}.StaticHostname", "set", {"StaticHostname": None})]


def test_well_known_setter_rides_in_the_payload() -> None:
    plan = DbusPropertiesPlugin().diff(state({"StaticHostname": "web-01"}), state({"StaticHostname": "lab"}))
    assert plan[0].payload["setter"]["method"] == "SetStaticHostname"
    assert plan[0].payload["setter"]["args"] == ["$StaticHostname", False]


def test_user_setter_overrides_and_defaults_args() -> None:
    desired = DbusState.model_validate({"com.example.Svc1": {"/": {"com.example.Svc1": {"Colour": "red"}}},
                                        "setters": {"com.example.Svc1": {"Colour": {"method": "SetColour"}}}})
    current = DbusState.model_validate({"com.example.Svc1": {"/": {"com.example.Svc1": {"Colour": "blue"}}}})
    (change,) = DbusPropertiesPlugin().diff(desired, current)
    assert change.payload["setter"] == {"method": "SetColour", "args": ["$Colour"], "interface": None}
    assert setter_for({}, "com.example.Svc1", "Colour") is None


def test_multi_property_setters_share_one_spec() -> None:
    x11 = WELL_KNOWN_SETTERS["org.freedesktop.locale1"]
    assert x11["X11Layout"] is x11["X11Options"]
    assert referenced(x11["X11Layout"].args or []) == ["X11Layout", "X11Model", "X11Variant", "X11Options"]


def test_substitute() -> None:
    assert substitute(["$A", "$$lit", 3, False], {"A": "v"}) == ["v", "$lit", 3, False]


def test_object_names() -> None:
    assert object_name(HOST, HOST_PATH, HOST, "Chassis") == "org.freedesktop.hostname1.Chassis"
    assert object_name("a.b", "/x", "a.b.C", "P") == "a.b /x a.b.C.P"


def test_dump_is_the_files_shape_and_round_trips() -> None:
    plugin = DbusPropertiesPlugin()
    value = section({"StaticHostname": "web-01"}, setters={"a.b": {"P": {"method": "SetP", "args": ["$P", False]}}})
    assert plugin.dump(DbusState.model_validate(value)) == value


def test_schema_describes_the_flat_shape() -> None:
    schema = DbusState.model_json_schema()
    assert "setters" in schema["properties"] and "services" not in schema["properties"]
    assert schema["patternProperties"]
