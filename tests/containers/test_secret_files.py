"""Backend files that carry a container's environment (LXC config, .nspawn settings) are 0600: they hold secrets.

LXC on a private lxcpath on this host; nspawn nested in the booted lab, whose root holds /etc/systemd/nspawn.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from tests.containers.conftest import Lxc, OpDbus, Templates

SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
PASSWORD = "lxc-horse-battery-7G"


def section(templates: Templates, backend: str, name: str, state: str = "running") -> dict[str, Any]:
    return {"templates": {"one": {"source": str(templates.one)}},
            "containers": {name: {"backend": backend, "image": "one", "command": SLEEP, "state": state,
                                  "env": {"DB_PASSWORD": PASSWORD, "TZ": "UTC"}}}}


def assert_private(path: Path, line: str) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, f"{path} has mode {stat.S_IMODE(st.st_mode):04o}"
    assert st.st_uid == 0
    assert line in path.read_text().splitlines()  # the backend itself needs the clear value


@pytest.fixture(scope="module")
def lxc_op(lxc: Lxc, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"),
                  {"OP_DBUS_LXC_PATH": str(lxc.path), "CONTAINER_HOST": "unix:///nonexistent/podman.sock",
                   "DOCKER_HOST": "unix:///nonexistent/docker.sock", "OP_DBUS_BUS": "unix:path=/nonexistent/bus"},
                  tmp_path_factory.mktemp("files"))


def test_lxc_config_with_a_secret_env_is_0600_and_the_output_shows_none(lxc_op: OpDbus, lxc: Lxc,
                                                                         templates: Templates) -> None:
    r = lxc_op("apply", str(lxc_op.state("lxc", section(templates, "lxc", "sec-lxc"))))
    assert r.code == 0, r.err
    assert PASSWORD not in r.out + r.err
    assert_private(lxc.path / "sec-lxc" / "config", f"lxc.environment = DB_PASSWORD={PASSWORD}")
    assert lxc.state("sec-lxc") == "RUNNING"
    environ = lxc.tool("lxc-attach", "sec-lxc", "--", "/bin/cat", "/proc/1/environ").stdout.split("\0")
    assert f"DB_PASSWORD={PASSWORD}" in environ
    r = lxc_op("apply", str(lxc_op.state("lxc-gone", section(templates, "lxc", "sec-lxc", "absent"))))
    assert r.code == 0, r.err


@pytest.fixture(scope="module")
def nspawn_op(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"),
                  {"OP_DBUS_BUS": lab.bus_address, "OP_DBUS_NSPAWN_ROOT": str(lab.root),
                   "CONTAINER_HOST": "unix:///nonexistent/podman.sock", "DOCKER_HOST": "unix:///nonexistent/docker.sock"},
                  tmp_path_factory.mktemp("files"))


def test_nspawn_settings_with_a_secret_env_are_0600_and_the_output_shows_none(nspawn_op: OpDbus, lab: Any,
                                                                              templates: Templates) -> None:
    r = nspawn_op("apply", str(nspawn_op.state("ns", section(templates, "nspawn", "sec-ns"))))
    assert r.code == 0, r.err
    assert PASSWORD not in r.out + r.err
    assert_private(lab.root / "etc/systemd/nspawn/sec-ns.nspawn", f"Environment=DB_PASSWORD={PASSWORD}")
    r = nspawn_op("apply", str(nspawn_op.state("ns-gone", section(templates, "nspawn", "sec-ns", "absent"))))
    assert r.code == 0, r.err
