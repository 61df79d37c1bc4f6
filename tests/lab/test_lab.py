"""The lab itself: a booted container with real services, reachable from the host, able to run op-dbus inside."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from lab.machine import CLEAN_PATH, LabMachine

SERVICES = (
    "nginx",
    "redis-server",
    "postgresql",
    "postgresql@15-main",
    "openvswitch-switch",
    "ovsdb-server",
    "ovs-vswitchd",
)
OUR_UNITS = ("app-backend.service", "app-worker.service", "bench-simple.service")

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"

FETCH = """
import sys, time, urllib.request
deadline = time.monotonic() + 10
while True:
    try:
        print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
"""


async def call(bus: MessageBus, path: str, interface: str, member: str, signature: str = "", body: list | None = None):
    reply = await bus.call(
        Message(destination=SYSTEMD, path=path, interface=interface, member=member, signature=signature, body=body or [])
    )
    assert reply is not None
    assert reply.message_type == MessageType.METHOD_RETURN, (member, reply.error_name, reply.body)
    return reply.body


async def get_property(bus: MessageBus, path: str, interface: str, name: str):
    (variant,) = await call(bus, path, PROPERTIES, "Get", "ss", [interface, name])
    return variant.value


def test_leader_is_pid1_of_the_container(lab: LabMachine) -> None:
    status = Path(f"/proc/{lab.leader}/status").read_text()
    nspid = next(line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:"))
    assert nspid == [str(lab.leader), "1"]
    assert Path(f"/proc/{lab.leader}/comm").read_text().strip() == "systemd"
    assert (lab.root / "etc/hostname").read_text().strip() == "lab"


def test_manager_reached_running(lab: LabMachine) -> None:
    assert lab.boot_state == "running"
    assert lab.system_state() == "running"
    assert lab.run(["systemctl", "is-system-running"]).stdout.strip() == "running"


def test_services_are_active(lab: LabMachine) -> None:
    result = lab.run(["systemctl", "is-active", *SERVICES], check=False)
    assert result.stdout.split() == ["active"] * len(SERVICES), result.stdout


def test_services_answer(lab: LabMachine) -> None:
    assert lab.run(["redis-cli", "ping"]).stdout.strip() == "PONG"
    assert lab.run(["runuser", "-u", "postgres", "--", "psql", "-Atc", "select 40 + 2"]).stdout.strip() == "42"
    page = lab.run(["python3", "-c", FETCH, "http://127.0.0.1/"]).stdout
    assert "nginx" in page
    assert lab.run(["ovs-vsctl", "--timeout=10", "show"]).returncode == 0


def test_postgres_uses_the_notify_dropin(lab: LabMachine) -> None:
    shown = lab.run(["systemctl", "show", "-p", "Type", "-p", "DropInPaths", "postgresql@15-main"]).stdout
    assert "Type=notify" in shown
    assert "notify.conf" in shown


def test_own_units_installed_but_not_enabled(lab: LabMachine) -> None:
    result = lab.run(["systemctl", "is-enabled", *OUR_UNITS], check=False)
    assert result.stdout.split() == ["disabled"] * len(OUR_UNITS)
    result = lab.run(["systemctl", "is-active", *OUR_UNITS], check=False)
    assert result.stdout.split() == ["inactive"] * len(OUR_UNITS)


def test_run_has_a_clean_environment(lab: LabMachine) -> None:
    seen = dict(line.split("=", 1) for line in lab.run(["env"]).stdout.splitlines())
    assert seen["PATH"] == CLEAN_PATH
    assert seen["HOME"] == "/root"
    assert not [key for key in seen if key.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV"))]
    assert lab.run(["cat"], input="through stdin").stdout == "through stdin"
    assert lab.run(["sh", "-c", "exit 3"], check=False).returncode == 3


def test_changes_stay_in_the_overlay(lab: LabMachine) -> None:
    marker = "/etc/op-dbus-lab-marker"
    lab.run(["sh", "-c", f"echo written-inside > {marker}"])
    assert (lab.root / marker.lstrip("/")).read_text() == "written-inside\n"
    assert not (lab.rootfs / marker.lstrip("/")).exists()


async def test_host_drives_systemd_over_the_bus(lab: LabMachine) -> None:
    bus = await MessageBus(bus_address=lab.bus_address).connect()
    try:
        assert await get_property(bus, MANAGER_PATH, MANAGER, "SystemState") == "running"
        assert str(await get_property(bus, MANAGER_PATH, MANAGER, "Version")).startswith("252")
        (nginx,) = await call(bus, MANAGER_PATH, MANAGER, "GetUnit", "s", ["nginx.service"])
        assert await get_property(bus, nginx, "org.freedesktop.systemd1.Unit", "ActiveState") == "active"

        # Start one of the lab's own units from the host, check it serves, stop it again.
        (_job,) = await call(bus, MANAGER_PATH, MANAGER, "StartUnit", "ss", ["app-backend.service", "replace"])
        (backend,) = await call(bus, MANAGER_PATH, MANAGER, "LoadUnit", "s", ["app-backend.service"])
        for _ in range(200):
            if await get_property(bus, backend, "org.freedesktop.systemd1.Unit", "ActiveState") == "active":
                break
            await asyncio.sleep(0.025)
        inside = lab.run(["systemctl", "show", "-p", "ActiveState", "--value", "app-backend"]).stdout.strip()
        assert inside == "active"
        assert "app-backend is serving" in lab.run(["python3", "-c", FETCH, "http://127.0.0.1:8080/"]).stdout
        await call(bus, MANAGER_PATH, MANAGER, "StopUnit", "ss", ["app-backend.service", "replace"])
        for _ in range(200):
            if await get_property(bus, backend, "org.freedesktop.systemd1.Unit", "ActiveState") == "inactive":
                break
            await asyncio.sleep(0.025)
        assert lab.run(["systemctl", "is-active", "app-backend"], check=False).stdout.strip() == "inactive"
    finally:
        bus.disconnect()


def test_install_op_dbus_offline(lab: LabMachine) -> None:
    script = lab.install_op_dbus()
    assert script == "/opt/op-dbus/bin/op-dbus"
    assert os.access(lab.root / script.lstrip("/"), os.X_OK)
    where = lab.run(["/opt/op-dbus/bin/python", "-c", "import op_dbus, dbus_fast; print(op_dbus.__file__)"]).stdout
    assert where.strip() == "/opt/op-dbus/lib/python3.11/site-packages/op_dbus/__init__.py"


def test_masked_boot_and_clean_stop(lab_assets) -> None:
    """Two more machines at once: unique names, own buses, kernel-cmdline masks; nothing left after stop."""
    first = LabMachine(lab_assets.rootfs, lab_assets.wheels, kernel_args=["systemd.mask=redis-server.service"])
    second = LabMachine(lab_assets.rootfs, lab_assets.wheels)
    with first, second:
        assert first.name != second.name
        assert first.bus_address != second.bus_address
        ids = {m.run(["cat", "/etc/machine-id"]).stdout.strip() for m in (first, second)}
        assert len(ids) == 2
        assert first.run(["systemctl", "is-active", "redis-server"], check=False).stdout.strip() != "active"
        assert second.run(["systemctl", "is-active", "redis-server"]).stdout.strip() == "active"
        nspawn, leader, workdir, cgroups = first.nspawn_pid, first.leader, first.workdir, first.cgroups
        assert all(cgroup.is_dir() for cgroup in cgroups)
    assert first.stop_seconds is not None and second.stop_seconds is not None
    assert not Path(f"/proc/{nspawn}").exists()
    assert not Path(f"/proc/{leader}").exists()
    assert workdir is not None and not workdir.exists()
    assert not any(cgroup.exists() for cgroup in cgroups)


@pytest.mark.parametrize("unit", OUR_UNITS)
def test_own_units_start(lab: LabMachine, unit: str) -> None:
    lab.run(["systemctl", "start", unit])
    try:
        assert lab.run(["systemctl", "is-active", unit]).stdout.strip() == "active"
    finally:
        lab.run(["systemctl", "stop", unit])
