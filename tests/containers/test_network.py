"""Containers joined to a bridge by name: a veth per container, its host end on the bridge, TCP between them.

The bridge and everything on it live in a network namespace the test creates; op-dbus (and the LXC monitors
it starts) run inside that namespace, so the host's own interfaces are never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from op_dbus.plugin import plugin_specs
from tests.containers.conftest import Lxc, OpDbus, Podman, Result, Templates

SERVER = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do echo hello-from-a | nc -l -p 8080; done"]
IDLE = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


class NetnsOpDbus(OpDbus):
    """op-dbus run inside a network namespace (`ip netns exec` is only the test's way in)."""

    netns: str = ""

    def __call__(self, *args: str, timeout: float = 180) -> Result:
        import sys

        from tests.containers.conftest import SRC

        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-m", "op_dbus", "--state-dir",
                str(self.state_dir), *args]
        p = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(SRC), **self.env}, capture_output=True,
                           text=True, timeout=timeout, check=False)
        return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    name = f"opdbus-ct-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture(scope="module")
def bridge(netns: str) -> str:
    """A Linux bridge made with `ip` inside the test's namespace (the net plugin's job once it is installed)."""
    subprocess.run(["ip", "-n", netns, "link", "add", "br-ct", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", netns, "link", "set", "br-ct", "up"], check=True)
    return "br-ct"


@pytest.fixture
def lxc_in_netns(lxc: Lxc, netns: str) -> Iterator[Lxc]:
    """The private lxcpath; containers started inside the namespace are stopped from inside it (their monitors'
    sockets are abstract, hence per network namespace)."""
    yield lxc
    for config in lxc.path.glob("*/config"):
        in_netns(netns, "lxc-stop", "-P", str(lxc.path), "-n", config.parent.name, "-k", check=False)


def in_netns(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=60,
                          check=check)


def test_two_lxc_containers_on_a_bridge_talk_tcp(netns: str, bridge: str, lxc_in_netns: Lxc, templates: Templates,
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    lxc = lxc_in_netns
    op = NetnsOpDbus(tmp_path_factory.mktemp("state"), {"OP_DBUS_LXC_PATH": str(lxc.path)},
                     tmp_path_factory.mktemp("files"))
    op.netns = netns

    def net(ip: str) -> dict[str, object]:
        return {"bridge": bridge, "ipv4": {"address": [{"ip": ip, "prefix": 24}]}}

    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"net-a": {"backend": "lxc", "image": "one", "command": SERVER, "network": net("198.18.0.21")},
                              "net-b": {"backend": "lxc", "image": "one", "command": IDLE, "network": net("198.18.0.22")}}}
    r = op("apply", str(op.state("net", section)))
    assert r.code == 0, r.err
    ports = json.loads(in_netns(netns, "ip", "-j", "link", "show", "master", bridge).stdout)
    assert len(ports) == 2, ports  # one veth host end per container, both on the bridge
    got = in_netns(netns, "lxc-attach", "-P", str(lxc.path), "-n", "net-b", "--",
                   "/bin/sh", "-c", "nc -w 3 198.18.0.21 8080 </dev/null").stdout
    assert got.strip() == "hello-from-a"
    addr = in_netns(netns, "lxc-attach", "-P", str(lxc.path), "-n", "net-a", "--", "/bin/ip", "-4", "addr").stdout
    assert "198.18.0.21/24" in addr
    # the plan reads the attachment back: re-applying changes nothing
    d = op("-o", "json", "diff", str(op.state("net", section)))
    assert d.code == 0, d.out + d.err
    for c in section["containers"].values():
        c["state"] = "absent"
    assert op("apply", str(op.state("gone", section))).code == 0
    assert json.loads(in_netns(netns, "ip", "-j", "link", "show", "master", bridge).stdout) == []


@pytest.mark.skipif("net" not in plugin_specs(),
                    reason="the net plugin is not installed in this build: the OVS bridge comes from it")
def test_two_containers_on_an_ovs_bridge_of_the_net_plugin_talk_tcp(netns: str, lxc_in_netns: Lxc, templates: Templates,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    """One state file: the net plugin makes the OVS bridge, the containers plugin joins two containers to it."""
    lxc = lxc_in_netns
    if shutil.which("ovsdb-server") is None:
        pytest.skip("Open vSwitch is not installed")
    d = Path(tmp_path_factory.mktemp("ovs"))
    env = {"OVS_RUNDIR": str(d), "OVS_LOGDIR": str(d), "OVS_DBDIR": str(d), "OVS_SYSCONFDIR": str(d)}
    subprocess.run(["ovsdb-tool", "create", str(d / "conf.db"), "/usr/share/openvswitch/vswitch.ovsschema"], check=True)
    server = subprocess.Popen(["ovsdb-server", str(d / "conf.db"), f"--remote=punix:{d}/db.sock",
                               f"--unixctl={d}/ovsdb-server.ctl"], env={**os.environ, **env})
    for _ in range(200):
        if (d / "db.sock").exists():
            break
        time.sleep(0.01)
    # a new database has no Open_vSwitch row until something initialises it, as the init scripts do
    subprocess.run(["ovs-vsctl", f"--db=unix:{d}/db.sock", "--no-wait", "init"], check=True, env={**os.environ, **env})
    switch = subprocess.Popen(["ip", "netns", "exec", netns, "ovs-vswitchd", f"unix:{d}/db.sock",
                               f"--unixctl={d}/ovs-vswitchd.ctl"], env={**os.environ, **env})
    try:
        op = NetnsOpDbus(tmp_path_factory.mktemp("state"), {"OP_DBUS_LXC_PATH": str(lxc.path), **env},
                         tmp_path_factory.mktemp("files"))
        op.netns = netns
        doc = {"version": 1, "plugins": {
            # no `ports`: the net plugin would otherwise own the bridge's whole member list, container ports too
            "net": {"interfaces": [{"name": "core-sw1", "type": "ovs-bridge", "datapath-type": "netdev"}],
                    "ovsdb": f"{d}/db.sock"},
            "containers": {"templates": {"one": {"source": str(templates.one)}}, "containers": {
                "ovs-a": {"backend": "lxc", "image": "one", "command": SERVER,
                          "network": {"bridge": "core-sw1", "ipv4": {"address": [{"ip": "198.18.1.21", "prefix": 24}]}}},
                "ovs-b": {"backend": "lxc", "image": "one", "command": IDLE,
                          "network": {"bridge": "core-sw1", "ipv4": {"address": [{"ip": "198.18.1.22", "prefix": 24}]}}},
            }}}}
        f = op.files / "ovs.json"
        f.write_text(json.dumps(doc))
        f.chmod(0o600)
        r = op("apply", str(f))
        assert r.code == 0, r.err
        for name in ("ovs-a", "ovs-b"):  # the userspace datapath needs checksums computed in software
            pid = in_netns(netns, "lxc-info", "-P", str(lxc.path), "-n", name, "-p", "-H").stdout.strip()
            subprocess.run(["nsenter", "-t", pid, "-n", "ethtool", "-K", "eth0", "tx", "off"], check=True,
                           capture_output=True)
        got = in_netns(netns, "lxc-attach", "-P", str(lxc.path), "-n", "ovs-b", "--",
                       "/bin/sh", "-c", "nc -w 3 198.18.1.21 8080 </dev/null").stdout
        assert got.strip() == "hello-from-a"
    finally:
        for proc in (switch, server):
            proc.terminate()
            proc.wait(timeout=10)


class NsenterOpDbus(OpDbus):
    """op-dbus run in a network namespace only (`nsenter --net`): the mount namespace stays the host's, so the
    namespaces it bind-mounts under /run/netns are seen by the podman service."""

    netns: str = ""

    def __call__(self, *args: str, timeout: float = 180) -> Result:
        import sys

        from tests.containers.conftest import SRC

        argv = ["nsenter", f"--net=/run/netns/{self.netns}", sys.executable, "-m", "op_dbus", "--state-dir",
                str(self.state_dir), *args]
        p = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(SRC), **self.env}, capture_output=True,
                           text=True, timeout=timeout, check=False)
        return Result(p.returncode, p.stdout, p.stderr)


def test_two_podman_containers_on_a_bridge_talk_tcp(netns: str, bridge: str, podman: Podman, templates: Templates,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    op = NsenterOpDbus(tmp_path_factory.mktemp("state"), {"CONTAINER_HOST": f"unix://{podman.socket}"},
                       tmp_path_factory.mktemp("files"))
    op.netns = netns

    def net(ip: str) -> dict[str, object]:
        return {"bridge": bridge, "ipv4": {"address": [{"ip": ip, "prefix": 24}]}}

    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"pod-a": {"backend": "podman", "image": "one", "command": SERVER,
                                        "network": net("198.18.0.31")},
                              "pod-b": {"backend": "podman", "image": "one", "command": IDLE,
                                        "network": net("198.18.0.32")}}}
    try:
        r = op("apply", str(op.state("pnet", section)))
        assert r.code == 0, r.err
        ports = json.loads(in_netns(netns, "ip", "-j", "link", "show", "master", bridge).stdout)
        assert len(ports) == 2, ports
        got = podman.cli("exec", "pod-b", "/bin/sh", "-c", "nc -w 3 198.18.0.31 8080 </dev/null").stdout
        assert got.strip() == "hello-from-a"
        assert "198.18.0.31/24" in podman.cli("exec", "pod-a", "/bin/ip", "-4", "addr").stdout
        d = op("-o", "json", "diff", str(op.state("pnet", section)))
        assert d.code == 0, d.out + d.err
        # moving a container to another address is announced as a recreation of the network setting
        section["containers"]["pod-b"]["network"] = net("198.18.0.33")
        d = op("-o", "json", "diff", str(op.state("pnet2", section)))
        (change,) = d.json()["changes"]
        assert change["action"] == "recreate" and change["before"]["network"]["ipv4"]["address"][0]["ip"] == "198.18.0.32"
    finally:
        for c in section["containers"].values():
            c["state"] = "absent"
        r = op("apply", str(op.state("pgone", section)))
    assert r.code == 0, r.err
    assert json.loads(in_netns(netns, "ip", "-j", "link", "show", "master", bridge).stdout) == []
    assert not Path("/run/netns/op-dbus-pod-a").exists()
