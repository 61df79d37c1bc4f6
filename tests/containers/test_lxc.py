"""The LXC backend on a private lxcpath: config files read natively, lifecycle through liblxc's tools."""

from __future__ import annotations

import pytest

from tests.containers.conftest import Lxc, OpDbus, Templates
from tests.containers.lifecycle import Lifecycle

SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


class LxcOracle:
    def __init__(self, lxc: Lxc) -> None:
        self.lxc = lxc

    def exists(self, name: str) -> bool:
        return (self.lxc.path / name / "config").exists()

    def running(self, name: str) -> bool:
        return self.lxc.state(name) == "RUNNING"

    def managed(self, name: str) -> bool:
        return (self.lxc.path / name / "config").read_text().startswith("# op-dbus: ")

    def exec(self, name: str, argv: list[str]) -> str:
        return self.lxc.tool("lxc-attach", name, "--", *argv).stdout

    def make_unmanaged(self, name: str, templates: Templates) -> None:
        (self.lxc.path / name).mkdir()
        (self.lxc.path / name / "config").write_text(
            f"lxc.uts.name = {name}\nlxc.rootfs.path = dir:{templates.one_dir}\nlxc.net.0.type = empty\n")


@pytest.fixture(scope="module")
def oracle(lxc: Lxc) -> LxcOracle:
    return LxcOracle(lxc)


@pytest.fixture(scope="module")
def op(lxc: Lxc, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"),
                  {"OP_DBUS_LXC_PATH": str(lxc.path), "CONTAINER_HOST": "unix:///nonexistent/podman.sock",
                   "DOCKER_HOST": "unix:///nonexistent/docker.sock", "OP_DBUS_BUS": "unix:path=/nonexistent/bus"},
                  tmp_path_factory.mktemp("files"))


class TestLxc(Lifecycle):
    backend = "lxc"
    extra = {"command": SLEEP, "env": {"TZ": "UTC"}, "limits": {"memory": "64M", "cpus": 0.5}, "autostart": True}


def test_settings_reach_the_container(op: OpDbus, templates: Templates, lxc: Lxc,
                                      tmp_path_factory: pytest.TempPathFactory) -> None:
    www = tmp_path_factory.mktemp("www")
    (www / "index.html").write_text("hello\n")
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"web-l": {"backend": "lxc", "image": "one", "command": SLEEP, "env": {"MODE": "test"},
                                        "mounts": [{"source": str(www), "target": "/var/www", "read_only": True}],
                                        "limits": {"memory": "32M"}}}}
    r = op("apply", str(op.state("web", section)))
    assert r.code == 0, r.err
    assert lxc.tool("lxc-attach", "web-l", "--", "/bin/cat", "/var/www/index.html").stdout == "hello\n"
    assert lxc.tool("lxc-attach", "web-l", "--", "/bin/sh", "-c", "echo x > /var/www/y", check=False).returncode != 0
    assert "MODE=test" in lxc.tool("lxc-attach", "web-l", "--", "/bin/cat", "/proc/1/environ").stdout
    memory = lxc.tool("lxc-cgroup", "web-l", "memory.limit_in_bytes", check=False).stdout.strip() or \
        lxc.tool("lxc-cgroup", "web-l", "memory.max").stdout.strip()
    assert int(memory) == 32 << 20
    section["containers"]["web-l"]["state"] = "absent"
    assert op("apply", str(op.state("web3", section))).code == 0
    assert not (lxc.path / "web-l").exists()
