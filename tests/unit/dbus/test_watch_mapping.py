"""Which declared objects a bus signal or a linger flag file names: the pure part of the login1 and dbus watches."""

from __future__ import annotations

import struct
from types import SimpleNamespace

from op_dbus.backends import inotify
from op_dbus.plugins import dbus as dbus_props
from op_dbus.plugins import login1

LOGIN = login1.Login1State.model_validate({
    "users": {"alice": {"linger": True}, "bob": {}},
    "sessions": {"absent_for_users": ["mallory"], "absent": ["42"]},
})
PROPS = dbus_props.DbusState.model_validate({
    "org.freedesktop.hostname1": {"/org/freedesktop/hostname1": {
        "org.freedesktop.hostname1": {"StaticHostname": "web-01", "Chassis": "vm"}}},
    "com.example.Other": {"/org/freedesktop/hostname1": {"org.freedesktop.hostname1": {"StaticHostname": "x"}}},
})


def test_sessions_name_their_declared_user_or_id() -> None:
    assert login1.session_objects(LOGIN, "7", "mallory") == ("mallory",)
    assert login1.session_objects(LOGIN, "42", "alice") == ("42",)
    assert login1.session_objects(LOGIN, "42", "mallory") == ("mallory", "42")
    assert login1.session_objects(LOGIN, "8", "alice") is None
    # a session whose user is no longer known may still belong to a declared user
    assert login1.session_objects(LOGIN, "9", None) == ("9",)


def test_with_absent_remote_every_session_counts_and_without_sessions_none() -> None:
    remote = login1.Login1State.model_validate({"sessions": {"absent_remote": True}})
    assert login1.session_objects(remote, "3", "anyone") == ("3",)
    assert login1.session_objects(login1.Login1State.model_validate({"users": {"alice": {}}}), "3", "alice") is None


def test_users_and_linger_files_name_declared_users() -> None:
    assert login1.user_objects(LOGIN, "alice") == ("alice",)
    assert login1.user_objects(LOGIN, "mallory") == ("mallory",)
    assert login1.user_objects(LOGIN, "carol") is None
    assert login1.user_objects(LOGIN, None) == ("alice", "bob")
    assert login1.linger_objects(LOGIN, "alice") == ("alice",)
    assert login1.linger_objects(LOGIN, "bob") is None  # no linger declared for bob
    assert login1.linger_objects(LOGIN, "carol") is None
    assert login1.linger_objects(LOGIN, "") == ("alice",)


def test_caller_keys_name_the_user_or_session_a_call_is_about() -> None:
    def call(member: str, *body: object) -> SimpleNamespace:
        return SimpleNamespace(member=member, body=list(body))

    names = {1000: "alice"}.get
    assert login1.caller_keys(call("SetUserLinger", 1000, True, False), names) == ["alice"]
    assert login1.caller_keys(call("SetUserLinger", 4242, True, False), names) == []
    assert login1.caller_keys(call("TerminateSession", "42"), names) == ["42"]
    assert login1.caller_keys(call("ListSessions"), names) == []


def test_dbus_rules_name_sender_path_and_interface() -> None:
    rules = dbus_props.watch_rules(PROPS)
    assert ("type='signal',sender='org.freedesktop.hostname1',path='/org/freedesktop/hostname1',"
            "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
            "arg0='org.freedesktop.hostname1'") in rules
    assert sum("NameOwnerChanged" in r and "arg0='org.freedesktop.hostname1'" in r for r in rules) == 1
    assert len(rules) == 4


def test_changed_properties_map_to_plan_objects_of_the_sending_service() -> None:
    targets = dbus_props.watched(PROPS)[("/org/freedesktop/hostname1", "org.freedesktop.hostname1")]
    owners: dict[str, str | None] = {"org.freedesktop.hostname1": ":1.7", "com.example.Other": ":1.9"}
    path, iface = "/org/freedesktop/hostname1", "org.freedesktop.hostname1"
    assert dbus_props.changed_objects(targets, owners, ":1.7", path, iface, {"StaticHostname", "Hostname"}) == (
        "org.freedesktop.hostname1.StaticHostname",)
    assert dbus_props.changed_objects(targets, owners, ":1.9", path, iface, {"StaticHostname"}) == (
        "com.example.Other /org/freedesktop/hostname1 org.freedesktop.hostname1.StaticHostname",)
    assert dbus_props.changed_objects(targets, owners, ":1.7", path, iface, {"Hostname"}) == ()
    # an owner not learnt yet: every service declaring the object counts
    assert len(dbus_props.changed_objects(targets, {}, ":1.3", path, iface, {"StaticHostname"})) == 2


def test_service_objects_lists_every_declared_property() -> None:
    assert dbus_props.service_objects(PROPS, "org.freedesktop.hostname1") == (
        "org.freedesktop.hostname1.StaticHostname", "org.freedesktop.hostname1.Chassis")
    assert dbus_props.service_objects(PROPS, "org.example.Missing") == ()


def test_inotify_records_are_parsed() -> None:
    def record(wd: int, mask: int, name: bytes) -> bytes:
        padded = name + b"\0" * (16 - len(name))
        return struct.pack("iIII", wd, mask, 0, len(padded)) + padded

    buf = record(1, inotify.IN_CREATE, b"alice") + record(2, inotify.IN_DELETE, b"") + record(1, inotify.IN_MOVED_TO, b"b")
    assert inotify.parse(buf) == [(1, inotify.IN_CREATE, "alice"), (2, inotify.IN_DELETE, ""), (1, inotify.IN_MOVED_TO, "b")]


async def test_inotify_reports_names_created_and_removed(tmp_path: object) -> None:
    import asyncio
    from pathlib import Path

    d = Path(str(tmp_path))
    w = inotify.DirectoryWatch()
    try:
        assert w.add(str(d)) and not w.add(str(d / "missing"))
        events = w.events()
        (d / "alice").touch()
        got = await asyncio.wait_for(anext(events), 5)
        assert got[0] == str(d) and got[2] == "alice" and got[1] & inotify.IN_CREATE
        (d / "alice").unlink()
        got = await asyncio.wait_for(anext(events), 5)
        assert got[2] == "alice" and got[1] & inotify.IN_DELETE
        await events.aclose()
    finally:
        w.close()
