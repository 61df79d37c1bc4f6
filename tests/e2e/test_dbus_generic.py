"""The generic `dbus` plugin against real services on the lab's system bus: hostnamed, timedated and localed
(read-only properties with setter methods, bus-activated on demand), and a service of this test's own with
writable properties, a setter method and a method that always fails.

op-dbus runs on the host here, aimed at the lab's bus with --bus; the machine's own tools are the oracles.
"""

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
HOST, TIME, LOCALE = "org.freedesktop.hostname1", "org.freedesktop.timedate1", "org.freedesktop.locale1"


def own(service: str, props: dict[str, Any]) -> dict[str, Any]:
    """`{service: {its own path: {its own interface: props}}}`, the shape of the well-known services."""
    return {service: {"/" + service.replace(".", "/"): {service: props}}}


class Runner:
    def __init__(self, lab: Any, state_dir: Path) -> None:
        self.lab, self.state_dir, self.n = lab, state_dir, 0

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(SRC)}
        argv = [sys.executable, "-m", "op_dbus", "--bus", self.lab.bus_address, "--state-dir", str(self.state_dir),
                *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, check=False)

    def file(self, plugins: dict[str, Any]) -> str:
        self.n += 1
        path = self.state_dir / f"state{self.n}.json"
        path.write_text(json.dumps({"version": 1, "plugins": plugins}))
        path.chmod(0o600)
        return str(path)

    def apply(self, plugins: dict[str, Any]) -> tuple[int, Any, str]:
        r = self("-o", "json", "apply", self.file(plugins))
        return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


@pytest.fixture(scope="module")
def op(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Runner:
    state_dir = tmp_path_factory.mktemp("state")
    state_dir.chmod(0o700)
    return Runner(lab, state_dir)


@pytest.fixture(scope="module")
def service(lab: Any) -> Iterator[subprocess.Popen[str]]:
    svc.install_policy(lab)
    proc = svc.start(sys.executable, lab.bus_address)
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


def inside(lab: Any, *argv: str) -> str:
    return str(lab.run(list(argv)).stdout).strip()


def busctl_get(lab: Any, prop: str) -> Any:
    out = inside(lab, "busctl", "--json=short", "get-property", svc.NAME, svc.PATH, svc.NAME, prop)
    return json.loads(out)["data"]


def running_names(lab: Any) -> list[str]:
    out = inside(lab, "busctl", "--json=short", "call", "org.freedesktop.DBus", "/org/freedesktop/DBus",
                 "org.freedesktop.DBus", "ListNames")
    return list(json.loads(out)["data"][0])


def test_hostname_timezone_locale_are_set_and_verified(lab: Any, op: Runner) -> None:
    # freshly booted: the three daemons are not running; the first call activates them
    assert not {HOST, TIME, LOCALE} & set(running_names(lab))
    plugins = {"dbus": {**own(HOST, {"StaticHostname": "web-01", "PrettyHostname": "Web server 1"}),
                        **own(TIME, {"Timezone": "Asia/Tokyo"}),
                        **own(LOCALE, {"Locale": ["LANG=de_DE.UTF-8"]})}}
    d = op("-o", "json", "diff", op.file(plugins))
    assert d.returncode == 3, d.stderr
    assert {c["object"] for c in json.loads(d.stdout)["changes"]} == {
        "org.freedesktop.hostname1.StaticHostname", "org.freedesktop.hostname1.PrettyHostname",
        "org.freedesktop.timedate1.Timezone", "org.freedesktop.locale1.Locale"}
    code, out, err = op.apply(plugins)
    assert code == 0, err
    assert len(out["changes"]) == 4
    # the machine's own tools and files agree
    assert inside(lab, "hostnamectl", "--static") == "web-01"
    assert (lab.root / "etc/hostname").read_text().strip() == "web-01"
    assert inside(lab, "timedatectl", "show", "-p", "Timezone", "--value") == "Asia/Tokyo"
    assert os.readlink(lab.root / "etc/localtime").endswith("Asia/Tokyo")
    # Debian's localed keeps the locale in /etc/default/locale (upstream: /etc/locale.conf)
    assert "LANG=de_DE.UTF-8" in (lab.root / "etc/default/locale").read_text()
    assert "System Locale: LANG=de_DE.UTF-8" in inside(lab, "localectl", "status")
    assert op("diff", op.file(plugins)).returncode == 0


def test_one_setter_call_sets_several_properties(lab: Any, op: Runner) -> None:
    """locale1's SetX11Keyboard sets four properties; undeclared ones keep their live values."""
    code, _out, err = op.apply({"dbus": own(LOCALE, {"X11Layout": "de", "X11Model": "pc105"})})
    assert code == 0, err
    keyboard = (lab.root / "etc/default/keyboard").read_text()
    assert "XKBLAYOUT=de" in keyboard and "XKBMODEL=pc105" in keyboard
    assert inside(lab, "localectl", "status").count("X11 Layout: de") == 1


def test_machine_info_and_rtc_setters(lab: Any, op: Runner) -> None:
    """The other built-in setters: hostname1's machine-info fields and timedate1's three-argument SetLocalRTC."""
    code, _out, err = op.apply({"dbus": {
        **own(HOST, {"Deployment": "production", "Location": "rack 4", "IconName": "computer-server",
                     "Chassis": "server"}),
        **own(TIME, {"LocalRTC": True})}})
    assert code == 0, err
    info = (lab.root / "etc/machine-info").read_text()
    for line in ("DEPLOYMENT=production", 'LOCATION="rack 4"', "ICON_NAME=computer-server", "CHASSIS=server"):
        assert line in info, info
    assert inside(lab, "timedatectl", "show", "-p", "LocalRTC", "--value") == "yes"
    code, _out, err = op.apply({"dbus": own(TIME, {"LocalRTC": False})})
    assert code == 0, err
    assert inside(lab, "timedatectl", "show", "-p", "LocalRTC", "--value") == "no"


def test_introspect_round_trips_as_a_no_op(lab: Any, op: Runner) -> None:
    r = op("introspect", "dbus")
    assert r.returncode == 0, r.stderr
    section = json.loads(r.stdout)["plugins"]["dbus"]
    assert set(section) == {HOST, TIME, LOCALE}
    assert section[HOST]["/org/freedesktop/hostname1"][HOST]["StaticHostname"] == "web-01"
    code, out, err = op.apply({"dbus": section})
    assert code == 0, err
    assert out["changes"] == []


def test_a_failing_setter_rolls_back_what_was_applied(lab: Any, op: Runner) -> None:
    """timedated refuses NTP in the container (no time-sync service): the time zone set before it is undone."""
    before = inside(lab, "timedatectl", "show", "-p", "Timezone", "--value")
    code, _out, err = op.apply({"dbus": own(TIME, {"Timezone": "America/New_York", "NTP": True})})
    assert code == 4, err
    assert "rolled back" in err and "NTP" in err
    assert inside(lab, "timedatectl", "show", "-p", "Timezone", "--value") == before
    assert op("-o", "json", "blockchain", "list").returncode == 0
    blocks = json.loads(op("-o", "json", "blockchain", "list").stdout)
    assert blocks[-1]["kind"] == "failed"


def test_values_are_checked_against_the_signature_before_anything_changes(lab: Any, op: Runner) -> None:
    code, out, _err = op.apply({"dbus": {
        **own(HOST, {"StaticHostname": 5, "KernelName": "x", "NoSuchProperty": 1}),
        **own(LOCALE, {"Locale": ["LANG=C.UTF-8", 3]}),
        "org.example.NotHere1": {"/": {"org.example.NotHere1": {"X": 1}}},
    }})
    assert code == 2
    paths = {p["path"] for p in out["problems"]}
    base = 'plugins.dbus["org.freedesktop.hostname1"]["/org/freedesktop/hostname1"]["org.freedesktop.hostname1"]'
    assert paths == {
        f"{base}.StaticHostname", f"{base}.KernelName", f"{base}.NoSuchProperty",
        'plugins.dbus["org.freedesktop.locale1"]["/org/freedesktop/locale1"]["org.freedesktop.locale1"].Locale[1]',
        'plugins.dbus["org.example.NotHere1"]',
    }
    messages = " ".join(p["message"] for p in out["problems"])
    assert "read-only and no setter" in messages and "expected a string" in messages
    assert inside(lab, "hostnamectl", "--static") == "web-01"


def test_own_service_writable_properties(lab: Any, op: Runner, service: Any) -> None:
    props = {"Mode": "turbo", "Level": 7, "Ratio": 2, "Tags": ["x", "y"], "Limits": {"mem": 512, "cpu": 2}}
    code, out, err = op.apply({"dbus": {svc.NAME: {svc.PATH: {svc.NAME: props}}}})
    assert code == 0, err
    assert len(out["changes"]) == 5
    assert busctl_get(lab, "Mode") == "turbo"
    assert busctl_get(lab, "Level") == 7
    assert busctl_get(lab, "Ratio") == 2.0
    assert busctl_get(lab, "Tags") == ["x", "y"]
    assert busctl_get(lab, "Limits") == {"mem": 512, "cpu": 2}
    code, out, err = op.apply({"dbus": {svc.NAME: {svc.PATH: {svc.NAME: props}}}})
    assert (code, out["changes"]) == (0, [])


def test_own_service_setter_from_the_state_file(lab: Any, op: Runner, service: Any) -> None:
    section = {svc.NAME: {svc.PATH: {svc.NAME: {"Colour": "green"}}}}
    code, out, _ = op.apply({"dbus": section})
    assert code == 2 and "no setter method is known" in out["problems"][0]["message"]
    section["setters"] = {svc.NAME: {"Colour": {"method": "SetColour", "args": ["$Colour", False]}}}
    code, out, err = op.apply({"dbus": section})
    assert code == 0, err
    assert busctl_get(lab, "Colour") == "green"
    # a setter whose arguments do not fit the method is refused before anything runs
    section["setters"] = {svc.NAME: {"Colour": {"method": "SetColour", "args": ["$Colour"]}}}
    section[svc.NAME][svc.PATH][svc.NAME]["Colour"] = "red"
    code, out, _ = op.apply({"dbus": section})
    assert code == 2 and "takes 2 argument(s)" in out["problems"][0]["message"]
    assert busctl_get(lab, "Colour") == "green"


def test_own_service_failure_rolls_back_the_writable_property(lab: Any, op: Runner, service: Any) -> None:
    before = busctl_get(lab, "Mode")
    section = {svc.NAME: {svc.PATH: {svc.NAME: {"Mode": "rollback-me", "Shade": "dark"}}},
               "setters": {svc.NAME: {"Shade": {"method": "SetShade"}}}}
    code, _out, err = op.apply({"dbus": section})
    assert code == 4, err
    assert "shades cannot be changed" in err
    assert busctl_get(lab, "Mode") == before
