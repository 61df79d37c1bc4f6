"""Reading everything (introspect) must not start machined: it is bus-activated, and a read is not a change."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.containers.conftest import OpDbus, Templates
from tests.containers.test_nspawn import SLEEP


@pytest.fixture(scope="module")
def op(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"),
                  {"OP_DBUS_BUS": lab.bus_address, "OP_DBUS_NSPAWN_ROOT": str(lab.root),
                   "CONTAINER_HOST": "unix:///nonexistent/podman.sock", "DOCKER_HOST": "unix:///nonexistent/docker.sock",
                   "OP_DBUS_LXC_PATH": "/nonexistent/lxc"},
                  tmp_path_factory.mktemp("files"))


def machined(lab: Any) -> str:
    return str(lab.run(["systemctl", "is-active", "systemd-machined.service"], check=False).stdout.strip())


def test_introspect_leaves_machined_alone_and_still_sees_stopped_containers(lab: Any, op: OpDbus,
                                                                           templates: Templates) -> None:
    assert machined(lab) == "inactive"
    r = op("introspect", "containers")
    assert r.code == 0, r.err
    assert json.loads(r.out)["plugins"]["containers"] == {"templates": {}, "containers": {}}
    assert machined(lab) == "inactive"

    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"quiet-1": {"backend": "nspawn", "image": "one", "command": SLEEP, "state": "stopped"}}}
    assert op("apply", str(op.state("quiet", section))).code == 0
    lab.run(["systemctl", "stop", "systemd-machined.service"])
    r = op("introspect", "containers")
    assert r.code == 0, r.err
    got = json.loads(r.out)["plugins"]["containers"]
    assert got["containers"]["quiet-1"]["state"] == "stopped" and got["containers"]["quiet-1"]["image"] == "one"
    assert "one" in got["templates"]
    assert machined(lab) == "inactive"
