"""nmstate's dns-resolver applied through the real systemd-resolved (org.freedesktop.resolve1) inside the lab."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

DOC = {
    "interfaces": [
        {"name": "dns0", "type": "veth", "state": "up", "veth": {"peer": "dns0p"},
         "ipv4": {"enabled": True, "dhcp": False, "address": [{"ip": "198.18.53.10", "prefix-length": 24}]}},
    ],
    "dns-resolver": {"config": {"server": ["2001:db8::53", "198.18.53.1"], "search": ["example.com", "example.org"]}},
}


@pytest.fixture(scope="module")
def op_dbus(lab: Any) -> str:
    return str(lab.install_op_dbus())


def write_state(lab: Any, name: str, net: dict) -> str:
    path = lab.root / "root" / name
    path.write_text(yaml.safe_dump({"version": 1, "plugins": {"net": net}}))
    path.chmod(0o600)
    return f"/root/{name}"


def resolvectl(lab: Any, what: str, link: str) -> list[str]:
    out = lab.run(["resolvectl", what, link]).stdout
    return out.split(":", 1)[1].split()


def test_without_resolved_dns_is_refused_and_nothing_changes(lab: Any, op_dbus: str) -> None:
    lab.run(["systemctl", "stop", "systemd-resolved.service"])
    r = lab.run([op_dbus, "apply", write_state(lab, "dns.yml", DOC)], check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "systemd-resolved is not running" in r.stdout + r.stderr
    assert lab.run(["ip", "link", "show", "dns0"], check=False).returncode != 0


def test_dns_servers_and_search_domains_through_resolved(lab: Any, op_dbus: str) -> None:
    lab.run(["systemctl", "start", "systemd-resolved.service"])
    state = write_state(lab, "dns.yml", DOC)
    r = lab.run([op_dbus, "apply", state], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert resolvectl(lab, "dns", "dns0") == ["2001:db8::53", "198.18.53.1"]
    assert resolvectl(lab, "domain", "dns0") == ["example.com", "example.org"]
    assert lab.run([op_dbus, "diff", state], check=False).returncode == 0
    # A changed list replaces the old one; the audit log's undo brings the old one back.
    changed = dict(DOC, **{"dns-resolver": {"config": {"server": ["198.18.53.2"], "search": []}}})
    r = lab.run([op_dbus, "-o", "json", "apply", write_state(lab, "dns2.yml", changed)], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c["object"] for c in json.loads(r.stdout)["changes"]] == ["dns on dns0"]
    assert resolvectl(lab, "dns", "dns0") == ["198.18.53.2"] and resolvectl(lab, "domain", "dns0") == []
