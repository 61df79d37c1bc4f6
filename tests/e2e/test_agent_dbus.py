"""The agent in the lab watching logind and a declared D-Bus property: changes made behind its back with the
system's own tools (hostnamectl, loginctl, a PAM session) are recorded from events alone. The periodic
reconciliation is set to 600 s, so only the watches can explain a drift block within seconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from datetime import datetime
from typing import Any

import pytest

from tests.e2e.test_agent import EXE, STATE, Box, wait_for

HOST = "lab-host"
DOC = {"version": 1, "plugins": {
    "dbus": {"org.freedesktop.hostname1": {"/org/freedesktop/hostname1": {
        "org.freedesktop.hostname1": {"StaticHostname": HOST}}}},
    "login1": {"users": {"labuser": {"linger": False}}, "sessions": {"absent_for_users": ["mallory"]}},
}}
LATENCIES: dict[str, list[float]] = {}
_units = iter(range(1, 1000))


@pytest.fixture(scope="module")
def box(lab: Any) -> Box:
    b = Box(lab)
    lab.run(["sh", "-c", "id mallory || useradd -m mallory"])  # labuser comes with the lab image
    b.write_state(DOC)
    assert b.lab.run(["sh", "-c", f"python3 -m venv /opt/op-dbus && /opt/op-dbus/bin/pip install -q --no-index "
                                  f"--find-links /wheels op-dbus && {EXE} apply {STATE}"], check=False,
                     timeout=300).returncode == 0
    b.install("--no-proxmox", "--interval", "600")
    wait_for("the watches in place",
             lambda: b.status().get("watching") == {"dbus": "watching", "login1": "watching"}, timeout=20)
    return b


def latency(what: str, started: float, block: dict[str, Any]) -> float:
    """Milliseconds from the start of the command that changed something to the drift block's time."""
    ms = (datetime.fromisoformat(block["time"].replace("Z", "+00:00")).timestamp() - started) * 1000
    LATENCIES.setdefault(what, []).append(ms)
    print(f"\n{what}: drift recorded {ms:.0f} ms after the command started")
    return ms


def drift(box: Box, since: int, mentions: str, what: str, started: float) -> dict[str, Any]:
    # generous deadlines for a loaded machine: the interval is 600 s, so anything under a minute is an event's doing
    (block,) = wait_for(f"a drift block naming {mentions}", lambda: box.new_blocks(since, "drift", mentions),
                        timeout=60)
    assert latency(what, started, block) < 60_000
    return block


def login(box: Box, user: str) -> str:
    unit = f"pam-{user}-{next(_units)}.service"
    box.run("systemd-run", "-q", f"--unit={unit}", "-p", "PAMName=login", "-p", f"User={user}", "/bin/sleep", "600")
    return unit


def sessions_of(box: Box, user: str) -> list[str]:
    rows = [line.split() for line in box.run("loginctl", "list-sessions", "--no-legend").stdout.splitlines()]
    return [r[0] for r in rows if len(r) > 2 and r[2] == user]


def linger(box: Box, user: str) -> bool:
    return bool(box.run("loginctl", "show-user", user, "-p", "Linger", "--value", check=False).stdout.strip() == "yes")


def test_shadow_sees_a_hostname_set_behind_its_back(box: Box) -> None:
    since = len(box.blocks())
    started = time.time()
    box.run("hostnamectl", "set-hostname", "intruder")
    block = drift(box, since, "StaticHostname", "hostname1 StaticHostname", started)
    change = next(c for c in block["changes"] if c["object"] == "org.freedesktop.hostname1.StaticHostname")
    assert change["before"] == {"StaticHostname": HOST} and change["after"] == {"StaticHostname": "intruder"}, change
    assert "dbus PropertiesChanged" in block["meta"]["sources"], block["meta"]
    assert "org.freedesktop.hostname1.StaticHostname" in block["meta"]["objects"]
    assert_caller(block["actor"], "Set", "hostnamectl")  # who called hostname1
    time.sleep(1.0)
    assert box.run("hostnamectl", "--static").stdout.strip() == "intruder"  # shadow: nothing repaired
    box.run("hostnamectl", "set-hostname", HOST)
    wait_for("the drift to be resolved", lambda: box.status()["open_drift"] == 0, timeout=60)


def test_a_restarted_service_is_still_watched(box: Box) -> None:
    # hostnamed leaves the bus when idle and is activated again by the next call: the watch must outlive that
    box.run("systemctl", "stop", "systemd-hostnamed.service")
    time.sleep(0.5)
    since = len(box.blocks())
    started = time.time()
    box.run("hostnamectl", "set-hostname", "intruder2")
    drift(box, since, "intruder2", "hostname1 after a restart", started)
    box.run("hostnamectl", "set-hostname", HOST)
    wait_for("the drift to be resolved", lambda: box.status()["open_drift"] == 0, timeout=60)


def test_shadow_sees_linger_enabled_for_a_user_without_a_session(box: Box) -> None:
    since = len(box.blocks())
    started = time.time()
    box.run("loginctl", "enable-linger", "labuser")
    block = drift(box, since, "user labuser", "linger (no session)", started)
    # the flag file and logind's UserNew both announce it; on a loaded machine the block may be written before the
    # second one arrives
    assert {"linger file", "login1 UserNew"} & set(block["meta"]["sources"]), block["meta"]
    assert_caller(block["actor"], "SetUserLinger", "loginctl")
    box.run("loginctl", "disable-linger", "labuser")
    wait_for("the drift to be resolved", lambda: box.status()["open_drift"] == 0, timeout=60)


def test_shadow_sees_linger_enabled_for_a_logged_in_user(box: Box) -> None:
    # logind says nothing on the bus here (the user manager already runs): only the flag file tells
    unit = login(box, "labuser")
    wait_for("labuser's session", lambda: sessions_of(box, "labuser"))
    time.sleep(0.5)
    since = len(box.blocks())
    started = time.time()
    box.run("loginctl", "enable-linger", "labuser")
    block = drift(box, since, "user labuser", "linger (logged in)", started)
    assert "linger file" in block["meta"]["sources"], block["meta"]
    box.run("loginctl", "disable-linger", "labuser")
    wait_for("the drift to be resolved", lambda: box.status()["open_drift"] == 0, timeout=60)
    box.run("systemctl", "stop", unit)


def test_shadow_sees_a_session_of_a_user_declared_sessionless(box: Box) -> None:
    since = len(box.blocks())
    started = time.time()
    unit = login(box, "mallory")
    block = drift(box, since, "mallory", "session of mallory", started)
    # logind announces the user before the session; when the re-read after UserNew already finds the session, that
    # event is the one that opened the block
    assert {"login1 SessionNew", "login1 UserNew"} & set(block["meta"]["sources"]), block["meta"]
    assert "mallory" in block["meta"]["objects"], block["meta"]
    time.sleep(1.0)
    assert sessions_of(box, "mallory")  # shadow: nothing terminated
    box.run("systemctl", "stop", unit)
    wait_for("the drift to be resolved", lambda: box.status()["open_drift"] == 0, timeout=60)


def test_enforce_repairs_hostname_linger_and_session(box: Box) -> None:
    box.install("--no-proxmox", "--mode", "enforce", "--interval", "600")
    wait_for("the watches in place",
             lambda: box.status().get("watching") == {"dbus": "watching", "login1": "watching"}, timeout=20)
    since = len(box.blocks())
    box.run("hostnamectl", "set-hostname", "intruder3")
    wait_for("the hostname back", lambda: box.run("hostnamectl", "--static").stdout.strip() == HOST)
    assert box.new_blocks(since, "apply", "StaticHostname")
    box.run("loginctl", "enable-linger", "labuser")
    wait_for("linger off again", lambda: not linger(box, "labuser"))
    assert box.new_blocks(since, "apply", "labuser")
    login(box, "mallory")
    wait_for("mallory's session terminated", lambda: box.new_blocks(since, "apply", "mallory"), timeout=20)
    wait_for("no session of mallory", lambda: not sessions_of(box, "mallory"))
    assert box.op("verify", "--full").returncode == 0


def test_latencies_summary() -> None:
    for what, values in LATENCIES.items():
        print(f"{what}: {', '.join(f'{v:.0f}' for v in values)} ms")


async def test_dbus_watch_follows_a_service_that_comes_and_goes(lab: Any) -> None:
    # the watch itself, from the host against the lab's bus: a service owning a declared name sends only
    # invalidated properties, leaves the bus, and comes back on a new connection
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

    from op_dbus.backends import dbus
    from op_dbus.plugin import SUBSCRIBED, Context, Settings
    from op_dbus.plugins.dbus import DbusPropertiesPlugin, DbusState, object_name
    from tests.e2e import dbus_test_service as svc

    svc.install_policy(lab)
    scope = DbusState.model_validate({svc.NAME: {svc.PATH: {svc.NAME: {"Mode": "eco", "Level": 3}}}})
    mode, level = (object_name(svc.NAME, svc.PATH, svc.NAME, p) for p in ("Mode", "Level"))

    async def owner() -> MessageBus:
        bus = await dbus.connect(lab.bus_address)
        await bus.request_name(svc.NAME)
        return bus

    def invalidate(bus: MessageBus, names: list[str], interface: str = svc.NAME) -> Any:
        return bus.send(Message.new_signal(svc.PATH, dbus.PROPERTIES, "PropertiesChanged", "sa{sv}as",
                                           [interface, {}, names]))

    first = await owner()
    stranger = await dbus.connect(lab.bus_address)  # owns no declared name: its signals must not count
    async with Context(Settings(bus_address=lab.bus_address)) as ctx:
        events = DbusPropertiesPlugin().watch(scope, ctx)
        assert (await asyncio.wait_for(anext(events), 10)).source == SUBSCRIBED
        await invalidate(stranger, ["Mode"])
        await invalidate(first, ["Other"])  # not declared
        await invalidate(first, ["Tags"], "org.example.Elsewhere")  # not a declared interface
        await invalidate(first, ["Mode"])
        event = await asyncio.wait_for(anext(events), 5)
        assert event.objects == (mode,) and event.source == "dbus PropertiesChanged"
        first.disconnect()
        second = await owner()
        event = await asyncio.wait_for(anext(events), 5)
        assert event.source == f"dbus {svc.NAME} appeared" and mode in event.objects
        await invalidate(second, ["Level", "Mode"])
        event = await asyncio.wait_for(anext(events), 5)
        assert set(event.objects) == {mode, level}
        await events.aclose()
        second.disconnect()
    stranger.disconnect()
    assert first.connected is False


async def test_logind_sends_no_linger_change_for_a_logged_in_user(box: Box) -> None:
    # why the login1 watch reads the linger flag files: with the user's manager already running, enabling
    # linger changes nothing logind announces on the bus
    from op_dbus.backends import dbus

    unit = login(box, "labuser")
    wait_for("labuser's session", lambda: sessions_of(box, "labuser"))
    client = dbus.Client(await dbus.connect(box.lab.bus_address))
    try:
        rules = ["type='signal',sender='org.freedesktop.login1'"]
        heard = client.signals(rules, lambda msg: True, ready=True)
        assert await anext(heard) is None
        box.run("loginctl", "enable-linger", "labuser")
        assert linger(box, "labuser")
        got = []
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(await asyncio.wait_for(anext(heard), 1.0))
        assert not [m for m in got if "Linger" in json.dumps(m.body, default=str) or m.member.startswith("User")], got
        await heard.aclose()
    finally:
        client.bus.disconnect()
        box.run("loginctl", "disable-linger", "labuser")
        box.run("systemctl", "stop", unit)


def assert_caller(who: dict[str, Any], method_prefix: str, tool: str) -> None:
    """The bus client that made the change is named by method, uid and pid. Its command line too, unless the tool
    exited before the agent could read /proc/PID/cmdline: these tools exit right after their call, a race that
    shows on a quiet machine."""
    assert str(who.get("method", "")).startswith(method_prefix) and who.get("uid") == 0 and who.get("pid"), who
    assert who.get("command", "") == "" or tool in who["command"], who

