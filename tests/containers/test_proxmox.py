"""Contract tests of the Proxmox backend against a stand-in that follows pct(1): no Proxmox VE can run here.

What these tests prove: the commands op-dbus issues are the documented ones with well-formed options, and it
reads the documented output formats back. What they cannot prove: that a real Proxmox VE node agrees.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from op_dbus.backends.containers import ContainerSpec, Mount
from op_dbus.backends.containers.proxmox import ProxmoxBackend, parse_config, parse_list
from tests.containers.conftest import OpDbus, Templates
from tests.containers.lifecycle import Lifecycle

FAKE = Path(__file__).with_name("fake_pct.py")

PCT_LIST = """\
VMID       Status     Lock         Name
100        running                 web-1
101        stopped    backup       db-1
"""

PCT_CONFIG = """\
arch: amd64
cores: 2
cpulimit: 1.5
description: op-dbus%3A {"image"%3A "debian-base"}
hostname: web-1
memory: 512
mp0: /srv/www,mp=/var/www,ro=1
net0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:2A:3B:4C,ip=198.18.0.20/24,type=veth
onboot: 1
ostype: debian
rootfs: local-lvm:vm-100-disk-0,size=8G
swap: 512
tags: op-dbus;web
unprivileged: 1
"""


@pytest.fixture(scope="module")
def pve(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = Path(tmp_path_factory.mktemp("pve"))
    (d / "bin").mkdir()
    (d / "cache").mkdir()
    pct = d / "bin" / "pct"
    pct.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    pct.chmod(pct.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{d / 'bin'}:{os.environ['PATH']}", "FAKE_PCT_STATE": str(d / "state.json"),
            "OP_DBUS_PVE_TEMPLATE_DIR": str(d / "cache")}


class PctOracle:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def _cts(self) -> dict[str, Any]:
        path = Path(self.env["FAKE_PCT_STATE"])
        return json.loads(path.read_text()) if path.exists() else {}

    def _find(self, name: str) -> dict[str, Any] | None:
        return next((ct for ct in self._cts().values() if ct["config"]["hostname"] == name), None)

    def exists(self, name: str) -> bool:
        return self._find(name) is not None

    def running(self, name: str) -> bool:
        ct = self._find(name)
        return bool(ct and ct["status"] == "running")

    def managed(self, name: str) -> bool:
        ct = self._find(name)
        return bool(ct and "op-dbus" in ct["config"].get("tags", ""))

    def exec(self, name: str, argv: list[str]) -> str:
        import subprocess

        vmid = next(v for v, ct in self._cts().items() if ct["config"]["hostname"] == name)
        return subprocess.run(["pct", "exec", vmid, "--", *argv], env={**os.environ, **self.env}, capture_output=True,
                              text=True, check=True).stdout

    def make_unmanaged(self, name: str, templates: Templates) -> None:
        cts = self._cts()
        cts["555"] = {"status": "stopped", "config": {"hostname": name, "memory": "256"}, "template": str(templates.one)}
        Path(self.env["FAKE_PCT_STATE"]).write_text(json.dumps(cts))

    def calls(self) -> list[list[str]]:
        log = Path(self.env["FAKE_PCT_STATE"] + ".log")
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture(scope="module")
def oracle(pve: dict[str, str]) -> PctOracle:
    return PctOracle(pve)


@pytest.fixture(scope="module")
def op(pve: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"),
                  {**pve, "CONTAINER_HOST": "unix:///nonexistent/podman.sock",
                   "DOCKER_HOST": "unix:///nonexistent/docker.sock", "OP_DBUS_BUS": "unix:path=/nonexistent/bus",
                   "OP_DBUS_LXC_PATH": "/nonexistent/lxc"},
                  tmp_path_factory.mktemp("files"))


class TestProxmoxContract(Lifecycle):
    backend = "proxmox"
    extra = {"boot": True, "limits": {"memory": "64M", "cpus": 1}, "autostart": True,
             "network": {"bridge": "vmbr0", "ipv4": {"address": [{"ip": "198.18.0.30", "prefix": 24}]}}}


def test_create_issues_the_documented_command(oracle: PctOracle) -> None:
    creates = [c for c in oracle.calls() if c[0] == "create"]
    assert creates, "the lifecycle created containers through pct create"
    first = creates[0]
    assert first[1].isdigit() and int(first[1]) >= 100
    assert first[2] == "local:vztmpl/op-dbus-one.tar.gz"
    opts = dict(zip(first[3::2], first[4::2], strict=True))
    assert opts["--hostname"] == "life-1" and opts["--tags"] == "op-dbus"
    assert opts["--memory"] == "64" and opts["--cpulimit"] == "1" and opts["--onboot"] == "1"
    assert opts["--net0"] == "name=eth0,bridge=vmbr0,ip=198.18.0.30/24"
    assert ["destroy", first[1], "--purge", "1"] in oracle.calls()


def test_command_and_env_are_refused_for_system_containers(op: OpDbus, templates: Templates) -> None:
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"x-1": {"backend": "proxmox", "image": "one", "command": ["/bin/true"], "env": {"A": "1"}}}}
    r = op("apply", str(op.state("cmd", section)))
    assert r.code == 2, r.err
    assert "`command` is not supported" in r.err and "`env` is not supported" in r.err


def test_parse_documented_list_and_config() -> None:
    assert parse_list(PCT_LIST) == [(100, "running", "web-1"), (101, "stopped", "db-1")]
    info = parse_config("web-1", PCT_CONFIG)
    assert info.managed and info.image == "debian-base" and info.autostart
    assert info.memory == 512 << 20 and info.cpus == 1.5
    assert info.bridge == "vmbr0" and info.addresses == ["198.18.0.20/24"]
    assert info.mounts == [Mount("/srv/www", "/var/www", True)]
    unmanaged = parse_config("x", PCT_CONFIG.replace("tags: op-dbus;web", "tags: web"))
    assert not unmanaged.managed


async def test_mounts_become_mp_options(pve: dict[str, str], templates: Templates, monkeypatch) -> None:
    for key, value in pve.items():
        monkeypatch.setenv(key, value)
    backend = ProxmoxBackend()
    await backend.import_template("one", templates.one, None)
    await backend.create(ContainerSpec("mp-1", "one", mounts=[Mount("/srv/a", "/a", True), Mount("/srv/b", "/b")]))
    info = (await backend.inspect(["mp-1"]))["mp-1"]
    assert info.mounts == [Mount("/srv/a", "/a", True), Mount("/srv/b", "/b", False)]
    await backend.remove("mp-1")
    assert await backend.inspect(["mp-1"]) == {}
