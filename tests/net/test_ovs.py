"""The net plugin against a real ovsdb-server and ovs-vswitchd (userspace datapath) in a throwaway namespace."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from op_dbus.backends.ovsdb import Ovsdb
from op_dbus.errors import BackendError, ServiceUnavailable
from op_dbus.plugin import UndoLog
from op_dbus.plugins.net import NetSection

from .conftest import Net, Ovs, new_netns, sh
from .test_kernel import addrs_of, has_link, link

pytestmark = [pytest.mark.ovs, pytest.mark.netns]


@pytest.fixture
async def onet(ovs: Ovs):
    n = Net(ovs.netns, ovs.sock)
    yield n
    await n.aclose()


def ip_json_stats(ns: str, dev: str) -> dict:
    return json.loads(sh("ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev))[0]["stats64"]


def ports_of(ovs: Ovs, bridge: str) -> set[str]:
    return set(ovs.vsctl("list-ports", bridge).split())


def iface_col(ovs: Ovs, iface: str, col: str) -> str:
    return ovs.vsctl("get", "Interface", iface, col).strip().strip('"')


DOC = {"interfaces": [
    {"name": "br0", "type": "ovs-bridge", "ports": ["int0", "v0"],
     "ipv4": {"enabled": True, "dhcp": False, "address": [{"ip": "198.18.0.1", "prefix": 24}]}},
    {"name": "int0", "type": "ovs-interface", "mtu": 1400,
     "ipv4": {"address": [{"ip": "198.18.1.1", "prefix": 24}]}},
    {"name": "v0", "type": "veth", "veth": {"peer": "v0p"}},
]}


async def test_bridge_internal_and_veth_ports(onet: Net, ovs: Ovs) -> None:
    changes, _ = await onet.converge(DOC)
    assert ovs.vsctl("list-br").split() == ["br0"]
    assert ports_of(ovs, "br0") == {"int0", "v0"}
    assert iface_col(ovs, "int0", "type") == "internal"
    assert iface_col(ovs, "v0", "type") == ""
    # No kernel datapath here: the default picked the userspace one.
    assert ovs.vsctl("get", "Bridge", "br0", "datapath_type").strip() == "netdev"
    assert int(iface_col(ovs, "v0", "ofport")) > 0
    assert addrs_of(ovs.netns, "br0") == {"198.18.0.1/24"}
    assert addrs_of(ovs.netns, "int0") == {"198.18.1.1/24"}
    assert link(ovs.netns, "int0")["mtu"] == 1400 and iface_col(ovs, "int0", "mtu_request") == "1400"
    # The veth was created before OVS was asked to add it; OVS changes form one contiguous run (one transaction).
    ops = [c.payload["op"] for c in changes]
    assert ops.index("link_add") < ops.index("ovs_bridge_add")
    ovs_positions = [i for i, op in enumerate(ops) if op.startswith("ovs_")]
    assert ovs_positions == list(range(ovs_positions[0], ovs_positions[-1] + 1))
    assert (await onet.plan(DOC))[1] == []


async def test_ports_added_and_removed(onet: Net, ovs: Ovs) -> None:
    await onet.converge(DOC)
    _, undo = await onet.converge({"interfaces": [
        {"name": "br0", "ports": ["v0", "v1", "int1"]},
        {"name": "v1", "type": "veth", "veth": {"peer": "v1p"}},
        {"name": "int1", "type": "ovs-interface"},
    ]})
    assert ports_of(ovs, "br0") == {"v0", "v1", "int1"}
    assert not has_link(ovs.netns, "int0")
    assert has_link(ovs.netns, "int1")
    # Undoing brings int0 back with the address it had when its port was dropped.
    await onet.rollback(undo)
    assert ports_of(ovs, "br0") == {"int0", "v0"} and addrs_of(ovs.netns, "int0") == {"198.18.1.1/24"}
    await onet.converge({"interfaces": [{"name": "br0", "ports": ["v0", "v1", "int1"]},
                                        {"name": "v1", "type": "veth", "veth": {"peer": "v1p"}},
                                        {"name": "int1", "type": "ovs-interface"}]})
    await onet.converge({"interfaces": [{"name": "br0", "state": "absent"}]})
    assert ovs.vsctl("list-br").strip() == ""
    assert not has_link(ovs.netns, "br0")


async def test_round_trip_with_ovs(onet: Net, ovs: Ovs) -> None:
    await onet.converge(DOC)
    dump = onet.plugin.dump(await onet.query())
    br = next(i for i in dump["interfaces"] if i["name"] == "br0")
    assert br["type"] == "ovs-bridge" and br["ports"] == ["int0", "v0"] and br["datapath-type"] == "netdev"
    assert next(i for i in dump["interfaces"] if i["name"] == "int0")["type"] == "ovs-interface"
    _, changes = await onet.plan(dump)
    assert changes == [], [c.summary() for c in changes]


def _comparable(dump: dict) -> dict:
    # OVS gives a re-created internal port a new random MAC; the datapath's own tap comes and goes with its bridges.
    out = []
    for i in dump["interfaces"]:
        if i["name"] == "ovs-netdev":
            continue
        if i["type"] in ("ovs-bridge", "ovs-interface"):
            i = {k: v for k, v in i.items() if k != "mac-address"}
        out.append(i)
    return {**dump, "interfaces": out}


async def test_undo_log_replay_restores_ovs_and_kernel(onet: Net, ovs: Ovs) -> None:
    await onet.converge(DOC)
    before = onet.plugin.dump(await onet.query())
    _, undo = await onet.converge({"interfaces": [
        {"name": "br0", "ports": ["v0", "w0"], "ipv4": {"address": [{"ip": "198.18.0.2", "prefix": 24}]}},
        {"name": "int0", "state": "absent"},
        {"name": "w0", "type": "veth", "veth": {"peer": "w0p"}},
        {"name": "br1", "type": "ovs-bridge", "ports": ["int9"]},
        {"name": "int9", "type": "ovs-interface", "ipv4": {"address": [{"ip": "198.18.9.1", "prefix": 24}]}},
    ]})
    assert ovs.vsctl("list-br").split() == ["br0", "br1"]
    await onet.rollback(undo)
    assert ovs.vsctl("list-br").split() == ["br0"]
    assert ports_of(ovs, "br0") == {"int0", "v0"}
    assert _comparable(onet.plugin.dump(await onet.query())) == _comparable(before)


async def test_vswitchd_port_error_is_reported(onet: Net, ovs: Ovs) -> None:
    desired = NetSection.model_validate({"interfaces": [{"name": "br7", "type": "ovs-bridge", "ports": ["nodev0"]}]})
    changes = onet.plugin.diff(desired, await onet.query(desired))
    undo = UndoLog()
    with pytest.raises(BackendError, match="nodev0"):
        await onet.plugin.apply(changes, onet.ctx, undo)
    # The transaction did commit: its inverse is in the log, and replaying it removes the bridge.
    assert len(undo) == 1
    await onet.rollback(undo)
    assert ovs.vsctl("list-br").strip() == ""


async def test_a_port_nothing_provides_is_refused_by_check(onet: Net, ovs: Ovs) -> None:
    await onet.converge(DOC)
    ovs.vsctl("add-port", "br0", "patch0", "--", "set", "Interface", "patch0", "type=patch", "options:peer=none")
    before = ovs.vsctl("show")
    # v9's peer, an existing veth, an OVS-only port (no kernel device) and an internal port are all provided.
    desired = NetSection.model_validate({"interfaces": [
        {"name": "br0", "type": "ovs-bridge", "ports": ["int0", "v0", "patch0", "v9p", "nodev0"]},
        {"name": "v9", "type": "veth", "veth": {"peer": "v9p"}},
        {"name": "lb0", "type": "linux-bridge", "ports": ["nodev1"]},
    ]})
    problems = await onet.plugin.check(desired, onet.ctx)
    assert [(p.path, "does not exist" in p.message) for p in problems] == [
        ("plugins.net.interfaces[0].ports[4]", True), ("plugins.net.interfaces[2].ports[0]", True)]
    assert "'nodev0'" in problems[0].message and repr(ovs.netns) in problems[0].message
    assert ovs.vsctl("show") == before


async def test_ovsdb_unreachable(netns: str, tmp_path) -> None:
    n = Net(netns, str(tmp_path / "no-such-db.sock"))
    try:
        doc = {"interfaces": [{"name": "v5", "type": "veth", "veth": {"peer": "v5p"}},
                              {"name": "br5", "type": "ovs-bridge", "ports": ["v5"]}]}
        desired = NetSection.model_validate(doc)
        with pytest.raises(ServiceUnavailable) as exc:
            await n.plugin.check(desired, n.ctx)
        text = str(exc.value)
        assert "OVSDB connection failed" in text and "no-such-db.sock" in text
        assert "openvswitch-switch" in text and "systemctl" in text
        with pytest.raises(ServiceUnavailable):
            await n.plugin.query(n.ctx, desired)
        assert not has_link(netns, "v5")
    finally:
        await n.aclose()


async def test_ovsdb_client_echo_monitor_and_errors(ovs: Ovs) -> None:
    db = await Ovsdb.connect(ovs.sock)
    try:
        assert await db.call("echo", ["x"]) == ["x"]
        assert "Open_vSwitch" in await db.call("list_dbs", [])
        _mon, initial, queue = await db.monitor({"Bridge": {"columns": ["name"]}})
        assert initial == {} or "Bridge" not in initial or initial["Bridge"] == {}
        await db.transact([{"op": "insert", "table": "Bridge", "row": {"name": "m0"}, "uuid-name": "b"},
                           {"op": "mutate", "table": "Open_vSwitch", "where": [],
                            "mutations": [["bridges", "insert", ["set", [["named-uuid", "b"]]]]]}])
        update = await queue.get()
        assert [r["new"]["name"] for r in update["Bridge"].values()] == ["m0"]
        with pytest.raises(BackendError, match=r"constraint violation|referential"):
            await db.transact([{"op": "insert", "table": "Bridge", "row": {"name": "m0"}},
                               {"op": "mutate", "table": "Open_vSwitch", "where": [],
                                "mutations": [["bridges", "insert", ["set", [["uuid", NIL_UUID]]]]]}])
    finally:
        await db.close()


NIL_UUID = "00000000-0000-0000-0000-000000000000"

SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.2", 5001)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); total = 0
while True:
    b = c.recv(65536)
    if not b: break
    total += len(b)
c.sendall(str(total).encode()); c.close()
"""

CLIENT = """
import socket
c = socket.create_connection(("198.18.0.2", 5001), timeout=10)
c.sendall(b"x" * (4 << 20)); c.shutdown(socket.SHUT_WR)
print(c.recv(100).decode())
"""


async def test_tcp_between_namespaces_across_the_bridge(onet: Net, ovs: Ovs) -> None:
    ns_a, ns_b = new_netns(), new_netns()
    server = None
    try:
        await onet.converge({"interfaces": [
            {"name": "br0", "type": "ovs-bridge", "ports": ["a0", "b0"]},
            {"name": "a0", "type": "veth", "veth": {"peer": "a0p", "peer-netns": ns_a}},
            {"name": "b0", "type": "veth", "veth": {"peer": "b0p", "peer-netns": ns_b}},
        ]})
        for ns, dev, ip in ((ns_a, "a0p", "198.18.0.1"), (ns_b, "b0p", "198.18.0.2")):
            side = Net(ns, ovs.sock)
            try:
                await side.converge({"interfaces": [{"name": dev, "state": "up",
                                                     "ipv4": {"address": [{"ip": ip, "prefix": 24}]}}]})
            finally:
                await side.aclose()
            # The userspace datapath does not fill in checksums that veth leaves to offload.
            sh("ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off")
        server = subprocess.Popen(["ip", "netns", "exec", ns_b, sys.executable, "-c", SERVER],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = subprocess.run(["ip", "netns", "exec", ns_a, sys.executable, "-c", CLIENT],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == str(4 << 20)
        # The frames went through the bridge's port (the kernel counts what the veth handed to ovs-vswitchd).
        stats = ip_json_stats(ovs.netns, "a0")
        assert stats["rx"]["bytes"] > 4 << 20
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        sh("ip", "netns", "del", ns_a, check=False)
        sh("ip", "netns", "del", ns_b, check=False)


async def test_ovs_interface_mac_mtu_and_state(onet: Net, ovs: Ovs) -> None:
    await onet.converge(DOC)
    await onet.converge({"interfaces": [{"name": "int0", "mac-address": "02:00:00:00:cc:01", "mtu": 1300, "state": "down"}]})
    info = link(ovs.netns, "int0")
    assert info["address"] == "02:00:00:00:cc:01" and info["mtu"] == 1300 and "UP" not in info["flags"]
    assert iface_col(ovs, "int0", "mtu_request") == "1300"
    # Still so after ovs-vswitchd's next reconfiguration.
    ovs.vsctl("set", "Open_vSwitch", ".", "external_ids:poke=1")
    assert (await onet.plan({"interfaces": [{"name": "int0", "mac-address": "02:00:00:00:cc:01", "mtu": 1300,
                                             "state": "down"}]}))[1] == []


async def test_undo_of_a_bridge_removal_brings_it_back(onet: Net, ovs: Ovs) -> None:
    await onet.converge(DOC)
    before = onet.plugin.dump(await onet.query())
    _, undo = await onet.converge({"interfaces": [{"name": "br0", "state": "absent"}]})
    assert ovs.vsctl("list-br").strip() == "" and not has_link(ovs.netns, "int0")
    await onet.rollback(undo)
    assert ports_of(ovs, "br0") == {"int0", "v0"}
    assert iface_col(ovs, "int0", "type") == "internal"
    assert _comparable(onet.plugin.dump(await onet.query())) == _comparable(before)
