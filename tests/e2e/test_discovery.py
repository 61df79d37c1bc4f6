"""`op-dbus query --discover-all` on the lab's whole system bus: every service with its objects, interfaces and
property values, checked against `busctl`; a service that denies access or never answers is listed as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import dbus_test_service as svc

LAB_KERNEL_ARGS = [f"systemd.mask={u}" for u in ("postgresql@15-main.service", "redis-server.service",
                                                  "nginx.service", "openvswitch-switch.service",
                                                  "ovsdb-server.service", "ovs-vswitchd.service")]
SRC = Path(__file__).resolve().parents[2] / "src"
SYSTEMD = "org.freedesktop.systemd1"


def op_dbus(lab: Any, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "op_dbus", "--bus", lab.bus_address, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "PYTHONPATH": str(SRC)}, **kw)


@pytest.fixture(scope="module")
def service(lab: Any) -> Iterator[None]:
    svc.install_policy(lab)
    proc = svc.start(sys.executable, lab.bus_address)
    yield
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def discovered(lab: Any, service: None) -> dict[str, Any]:
    r = op_dbus(lab, "-o", "json", "query", "--discover-all", "--timeout", "1")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def busctl(lab: Any, *args: str) -> str:
    return str(lab.run(["busctl", *args]).stdout)


def test_every_service_is_listed_with_its_status(lab: Any, discovered: dict[str, Any]) -> None:
    services = discovered["services"]
    running = {n for n in json.loads(busctl(lab, "--json=short", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                            "org.freedesktop.DBus", "ListNames"))["data"][0] if not n.startswith(":")}
    activatable = set(json.loads(busctl(lab, "--json=short", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                        "org.freedesktop.DBus", "ListActivatableNames"))["data"][0])
    assert set(services) == running | activatable
    assert services[SYSTEMD]["status"] == "ok" and services[SYSTEMD]["pid"] == 1
    assert services["org.freedesktop.login1"]["status"] == "ok"
    assert services[svc.NAME]["status"] == "ok"
    # a service that never answers is reported, not fatal
    assert services[svc.SILENT]["status"] == "timeout"
    for name in activatable - running:
        assert services[name]["status"] == "activatable" and services[name]["activatable"] is True
    summary = discovered["summary"]
    assert summary["objects"] > 100 and summary["properties"] > 1000


def test_objects_and_values_agree_with_busctl(lab: Any, discovered: dict[str, Any]) -> None:
    objects = discovered["services"][SYSTEMD]["objects"]
    units = {p for p in busctl(lab, "tree", "--list", SYSTEMD).split() if p.startswith("/org/freedesktop/systemd1/unit/")}
    assert units and units <= set(objects)
    manager = objects["/org/freedesktop/systemd1"]["org.freedesktop.systemd1.Manager"]
    version = json.loads(busctl(lab, "--json=short", "get-property", SYSTEMD, "/org/freedesktop/systemd1",
                                "org.freedesktop.systemd1.Manager", "Version"))["data"]
    assert manager["Version"] == {"type": "s", "access": "read", "value": version}
    own = discovered["services"][svc.NAME]["objects"][svc.PATH][svc.NAME]
    assert own["Mode"]["access"] == "readwrite" and own["Mode"]["type"] == "s"
    assert own["Limits"]["type"] == "a{su}" and isinstance(own["Limits"]["value"], dict)
    assert own["Colour"]["access"] == "read"


def test_activate_walks_bus_activatable_services(lab: Any, service: None) -> None:
    r = op_dbus(lab, "-o", "json", "query", "--discover-all", "--activate", "--timeout", "2")
    assert r.returncode == 0, r.stderr
    hostname = json.loads(r.stdout)["services"]["org.freedesktop.hostname1"]
    assert hostname["status"] == "ok"
    props = hostname["objects"]["/org/freedesktop/hostname1"]["org.freedesktop.hostname1"]
    assert props["StaticHostname"]["value"] == busctl(lab, "get-property", "org.freedesktop.hostname1",
                                                      "/org/freedesktop/hostname1", "org.freedesktop.hostname1",
                                                      "StaticHostname").split(maxsplit=1)[1].strip().strip('"')


def test_denied_services_are_listed_for_an_unprivileged_user(lab: Any, service: None) -> None:
    """Run inside the lab as an ordinary user: the test service's policy lets only root call it."""
    exe = lab.install_op_dbus()
    r = lab.run(["runuser", "-u", "labuser", "--", exe, "-o", "json", "query", "--discover-all", "--timeout", "1"],
                check=False)
    assert r.returncode == 0, r.stderr
    services = json.loads(r.stdout)["services"]
    assert services[svc.NAME]["status"] == "denied"
    assert "access denied" in services[svc.NAME]["errors"][0]
    assert services[svc.SILENT]["status"] == "timeout"
    assert services[SYSTEMD]["status"] in ("ok", "partial")


def test_progress_on_a_terminal_and_a_text_summary(lab: Any, service: None) -> None:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "op_dbus", "--bus", lab.bus_address, "query", "--discover-all",
                                 "--timeout", "1"], stdout=subprocess.PIPE, stderr=slave, text=True,
                                env={**os.environ, "PYTHONPATH": str(SRC), "TERM": "xterm", "COLUMNS": "120"})
        os.close(slave)
        stdout, _ = proc.communicate(timeout=120)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
    assert proc.returncode == 0
    assert b"discovering" in shown
    assert "org.freedesktop.systemd1  [ok] pid 1" in stdout
    assert f"{svc.SILENT}  [timeout]" in stdout
    assert "objects/s" in stdout.splitlines()[-1]
