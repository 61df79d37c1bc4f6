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
