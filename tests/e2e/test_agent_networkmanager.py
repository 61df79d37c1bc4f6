"""The agent in the lab watching NetworkManager and power-profiles-daemon: a profile or power profile changed
behind its back (nmcli, busctl) is recorded as drift from the services' signals alone; the periodic
reconciliation is set to 600 s, so only the watches explain a drift block within seconds."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.e2e.test_agent import EXE, STATE, Box, wait_for

LAN = {"connection": {"type": "802-3-ethernet", "interface-name": "ag0", "autoconnect": False},
       "ipv4": {"method": "manual", "addresses": ["198.18.65.1/24"]}, "ipv6": {"method": "disabled"}}
DOC = {"version": 1, "plugins": {"networkmanager": {"connections": {"aglan": LAN}},
                                 "power": {"profile": "power-saver"}}}


@pytest.fixture(scope="module")
def box(lab: Any) -> Box:
    b = Box(lab)
    lab.run(["sh", "-c", "printf '[main]\\nno-auto-default=*\\n' > /etc/NetworkManager/conf.d/90-test.conf"])
    lab.run(["ip", "link", "add", "ag0", "type", "veth", "peer", "name", "ag0p"])
    lab.run(["systemctl", "start", "NetworkManager.service", "power-profiles-daemon.service"])
    b.write_state(DOC)
    assert b.lab.run(["sh", "-c", f"python3 -m venv /opt/op-dbus && /opt/op-dbus/bin/pip install -q --no-index "
                                  f"--find-links /wheels op-dbus && {EXE} apply {STATE}"], check=False,
                     timeout=300).returncode == 0
    b.install("--no-proxmox", "--interval", "600")
    wait_for("the watches in place", lambda: b.status().get("watching") == {
        "networkmanager": "watching", "power": "watching"}, timeout=30)
    return b


def test_a_profile_changed_with_nmcli_is_recorded_as_drift(box: Box) -> None:
    since = len(box.blocks())
    started = time.monotonic()
    box.run("nmcli", "connection", "modify", "aglan", "ipv4.addresses", "198.18.66.1/24")
    (block,) = wait_for("a drift block naming aglan", lambda: box.new_blocks(since, "drift", "connection aglan"),
                        timeout=20)
    assert time.monotonic() - started < 15  # the interval is 600 s: only an event explains this
    change = next(c for c in block["changes"] if c["object"] == "connection aglan")
    # a drift block says what was declared (before) and what the system now has (after)
    assert change["before"]["ipv4"]["addresses"] == ["198.18.65.1/24"], change
    assert change["after"]["ipv4"]["addresses"] == ["198.18.66.1/24"], change


def test_a_power_profile_changed_behind_its_back_is_recorded_as_drift(box: Box) -> None:
    since = len(box.blocks())
    box.run("busctl", "set-property", "net.hadess.PowerProfiles", "/net/hadess/PowerProfiles",
            "net.hadess.PowerProfiles", "ActiveProfile", "s", "balanced")
    (block,) = wait_for("a drift block naming the profile", lambda: box.new_blocks(since, "drift", "balanced"),
                        timeout=20)
    assert any(c["object"] == "profile" for c in block["changes"]), block["changes"]
