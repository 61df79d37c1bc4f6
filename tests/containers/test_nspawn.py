"""The nspawn backend on a real container host: nested nspawn containers inside the lab, run by its machined.

op-dbus runs on the host and reaches the lab's machined, importd and systemd over the lab's system bus; the
lab's root directory (where /etc/systemd/nspawn lives) is given to it as OP_DBUS_NSPAWN_ROOT.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.containers.conftest import OpDbus, Templates
from tests.containers.lifecycle import Lifecycle

SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


class NspawnOracle:
    """The lab's own machinectl/nsenter: what machined knows and what runs in the nested container."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab

    def exists(self, name: str) -> bool:
        return self.lab.run(["machinectl", "show-image", name], check=False).returncode == 0

    def running(self, name: str) -> bool:
        return self.lab.run(["machinectl", "show", name], check=False).returncode == 0

    def managed(self, name: str) -> bool:
        f = self.lab.root / "etc/systemd/nspawn" / f"{name}.nspawn"
        return f.exists() and f.read_text().startswith("# op-dbus: ")

    def exec(self, name: str, argv: list[str]) -> str:
        leader = self.lab.run(["machinectl", "show", name, "-p", "Leader", "--value"]).stdout.strip()
        return str(self.lab.run(["nsenter", "-t", leader, "-a", *argv]).stdout)

    def make_unmanaged(self, name: str, templates: Templates) -> None:
        self.lab.run(["sh", "-c", f"mkdir -p /var/lib/machines/{name}/etc"])


@pytest.fixture(scope="module")
def oracle(lab: Any) -> NspawnOracle:
    return NspawnOracle(lab)


@pytest.fixture(scope="module")
def op(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"),
                  {"OP_DBUS_BUS": lab.bus_address, "OP_DBUS_NSPAWN_ROOT": str(lab.root),
                   "CONTAINER_HOST": "unix:///nonexistent/podman.sock", "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
                  tmp_path_factory.mktemp("files"))


class TestNspawn(Lifecycle):
    backend = "nspawn"
    extra = {"command": SLEEP, "env": {"TZ": "UTC"}, "autostart": True}


def test_autostart_enabled_the_unit_until_removal(lab: Any, op: OpDbus, templates: Templates) -> None:
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"auto-1": {"backend": "nspawn", "image": "one", "command": SLEEP, "autostart": True,
                                         "mounts": [{"source": "/srv/app", "target": "/srv/app", "read_only": True}]}}}
    r = op("apply", str(op.state("auto", section)))
    assert r.code == 0, r.err
    unit = "systemd-nspawn@auto-1.service"
    assert lab.run(["systemctl", "is-enabled", unit], check=False).stdout.strip() == "enabled"
    oracle = NspawnOracle(lab)
    assert "app-backend is serving" in oracle.exec("auto-1", ["/bin/cat", "/srv/app/index.html"])
    section["containers"]["auto-1"]["state"] = "absent"
    r = op("apply", str(op.state("auto-gone", section)))
    assert r.code == 0, r.err
    assert lab.run(["systemctl", "is-enabled", unit], check=False).stdout.strip() == "disabled"
    assert not oracle.exists("auto-1")
    assert not (lab.root / "etc/systemd/nspawn/auto-1.nspawn").exists()


def test_two_nspawn_containers_on_a_bridge_talk_tcp(lab: Any, op: OpDbus, templates: Templates) -> None:
    """nspawn's own Bridge= makes the veth (vb-NAME on the bridge, host0 inside); op-dbus sets host0's address."""
    lab.run(["ip", "link", "add", "br-ns", "type", "bridge"])
    lab.run(["ip", "link", "set", "br-ns", "up"])
    server = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do echo hello-from-a | nc -l -p 8080; done"]

    def net(ip: str) -> dict[str, Any]:
        return {"bridge": "br-ns", "ipv4": {"address": [{"ip": ip, "prefix": 24}]}}

    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"ns-a": {"backend": "nspawn", "image": "one", "command": server, "network": net("198.18.2.1")},
                              "ns-b": {"backend": "nspawn", "image": "one", "command": SLEEP, "network": net("198.18.2.2")}}}
    r = op("apply", str(op.state("nsnet", section)))
    assert r.code == 0, r.err
    oracle = NspawnOracle(lab)
    assert "198.18.2.1/24" in oracle.exec("ns-a", ["/bin/ip", "-4", "addr", "show", "host0"])
    got = oracle.exec("ns-b", ["/bin/sh", "-c", "nc -w 3 198.18.2.1 8080 </dev/null"])
    assert got.strip() == "hello-from-a"
    assert op("-o", "json", "diff", str(op.state("nsnet", section))).json()["changes"] == []
    # an address removed behind op-dbus's back is drift, and a re-apply puts it back by recreating
    oracle.exec("ns-b", ["/bin/ip", "addr", "flush", "dev", "host0"])
    d = op("-o", "json", "diff", str(op.state("nsnet", section)))
    assert [(c["object"], c["action"]) for c in d.json()["changes"]] == [("ns-b", "recreate")]
    for c in section["containers"].values():
        c["state"] = "absent"
    assert op("apply", str(op.state("nsgone", section))).code == 0
    assert lab.run(["ip", "-o", "link", "show", "master", "br-ns"]).stdout.strip() == ""


def test_stop_and_absent_are_clean_and_leave_no_failed_unit(lab: Any, op: OpDbus, templates: Templates) -> None:
    """A stop powers the container off through its stub init: the unit ends inactive, never failed or degraded."""
    unit = "systemd-nspawn@clean-1.service"
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"clean-1": {"backend": "nspawn", "image": "one", "command": SLEEP}}}

    def unit_state() -> tuple[str, str]:
        out = lab.run(["systemctl", "show", unit, "-p", "ActiveState", "-p", "Result"]).stdout
        props = dict(line.split("=", 1) for line in out.split())
        return props["ActiveState"], props["Result"]

    assert op("apply", str(op.state("clean", section))).code == 0
    assert unit_state()[0] == "active"
    section["containers"]["clean-1"]["state"] = "stopped"
    r = op("apply", str(op.state("clean-stopped", section)))
    assert r.code == 0, r.err
    assert unit_state() == ("inactive", "success")
    journal = lab.run(["journalctl", "-u", unit, "--no-pager", "-o", "cat"], check=False).stdout
    assert "signal KILL" not in journal and "status=1/FAILURE" not in journal, journal
    assert lab.system_state() != "degraded", lab.run(["systemctl", "--failed", "--no-pager"]).stdout
    section["containers"]["clean-1"]["state"] = "running"
    assert op("apply", str(op.state("clean-again", section))).code == 0
    section["containers"]["clean-1"]["state"] = "absent"
    r = op("apply", str(op.state("clean-gone", section)))
    assert r.code == 0, r.err
    assert unit_state()[0] == "inactive"
    assert lab.run(["systemctl", "is-failed", unit], check=False).stdout.strip() != "failed"
    assert lab.system_state() != "degraded", lab.run(["systemctl", "--failed", "--no-pager"]).stdout
