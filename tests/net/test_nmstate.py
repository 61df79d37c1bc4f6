"""nmstate files, in nmstate's own layout, applied unchanged in a real namespace; the kernel (`ip -j`) is the oracle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import Net
from .test_kernel import addrs_of, has_link, ip_json, link, routes

pytestmark = pytest.mark.netns

FILES = Path(__file__).parent / "nmstate"


def load(name: str) -> dict:
    return yaml.safe_load((FILES / name).read_text())


async def test_linux_bridge_with_stp_and_port_options(net: Net, netns: str) -> None:
    await net.converge(load("linux-bridge-stp.yml"))
    info = link(netns, "br0")["linkinfo"]["info_data"]
    assert (info["stp_state"], info["forward_delay"], info["hello_time"], info["max_age"], info["priority"]) == \
        (1, 1000, 300, 1800, 4096)
    assert (info["ageing_time"], info["mcast_snooping"], int(str(info["group_fwd_mask"]), 0)) == (12000, 0, 8)
    port = link(netns, "eth1")
    assert port["master"] == "br0"
    pdata = port["linkinfo"]["info_slave_data"]
    assert (pdata["hairpin"], pdata["cost"], pdata["priority"]) == (True, 150, 20)
    assert addrs_of(netns, "br0") == {"192.0.2.251/24"}
    # Applying the same file again changes nothing.
    _desired, again = await net.plan(load("linux-bridge-stp.yml"))
    assert again == []
    # Changed options and port settings are undone by the undo log.
    doc = load("linux-bridge-stp.yml")
    doc["interfaces"][2]["bridge"]["options"]["stp"]["enabled"] = False
    doc["interfaces"][2]["bridge"]["options"]["mac-ageing-time"] = 600
    doc["interfaces"][2]["bridge"]["port"][0]["stp-path-cost"] = 300
    changes, undo = await net.converge(doc)
    assert len(changes) == 2
    info = link(netns, "br0")["linkinfo"]["info_data"]
    assert (info["stp_state"], info["ageing_time"]) == (0, 60000)
    assert link(netns, "eth1")["linkinfo"]["info_slave_data"]["cost"] == 300
    await net.rollback(undo)
    info = link(netns, "br0")["linkinfo"]["info_data"]
    assert (info["stp_state"], info["ageing_time"]) == (1, 12000)
    assert link(netns, "eth1")["linkinfo"]["info_slave_data"]["cost"] == 150


async def test_mac_vlan_spelling_and_promiscuous_flag(net: Net, netns: str) -> None:
    await net.converge(load("mac-vlan.yml"))
    mac0 = link(netns, "mac0")
    assert mac0["linkinfo"]["info_kind"] == "macvlan" and mac0["link"] == "eth2"
    assert mac0["linkinfo"]["info_data"]["mode"] == "passthru"
    assert mac0["linkinfo"]["info_data"].get("nopromisc") is True
    assert addrs_of(netns, "mac0") == {"198.51.100.7/24"}
    state = await net.query()
    dumped = next(i for i in net.plugin.dump(state)["interfaces"] if i["name"] == "mac0")
    assert dumped["macvlan"] == {"base-iface": "eth2", "mode": "passthru", "promiscuous": False}


async def test_vxlan(net: Net, netns: str) -> None:
    await net.converge(load("vxlan.yml"))
    data = link(netns, "vxlan102")["linkinfo"]["info_data"]
    assert (data["id"], data["remote"], data["port"], data["link"]) == (102, "192.0.2.251", 1235, "eth4")


async def test_static_routes_route_types_and_absent_wildcard(net: Net, netns: str) -> None:
    await net.converge(load("static-routes.yml"))
    table200 = routes(netns, "table", "200")
    assert [(r["dst"], r["gateway"], r["metric"]) for r in table200] == [("198.51.100.0/24", "192.0.2.1", 150)]
    main = {r["dst"]: r for r in routes(netns)}
    assert main["203.0.113.0/24"]["prefsrc"] == "192.0.2.10"
    assert main["203.0.113.0/24"]["metrics"] == [
        {"mtu": 1400, "cwnd": 10, "advmss": 1360, "initcwnd": 20, "initrwnd": 30, "quickack": 1}]
    assert {d: main[d].get("type") for d in ("198.18.10.0/24", "198.18.11.0/24", "198.18.12.0/24")} == {
        "198.18.10.0/24": "blackhole", "198.18.11.0/24": "unreachable", "198.18.12.0/24": "prohibit"}
    v6 = [r for r in ip_json(netns, "-6", "route", "show") if r["dst"] == "2001:db8:2::/64"]
    assert [(r["gateway"], r["metric"]) for r in v6] == [("2001:db8:1::1", 108)]
    _desired, again = await net.plan(load("static-routes.yml"))
    assert again == []

    changes, _undo = await net.converge(load("routes-absent-by-interface.yml"))
    assert {c.action for c in changes} == {"remove-route"} and len(changes) == 3
    assert routes(netns, "table", "200") == []
    left = {r["dst"] for r in routes(netns)}
    assert "203.0.113.0/24" not in left and {"198.18.10.0/24", "198.18.11.0/24", "198.18.12.0/24"} <= left
    assert not [r for r in ip_json(netns, "-6", "route", "show") if r["dst"] == "2001:db8:2::/64"]
    assert has_link(netns, "eth3")


@pytest.fixture
async def onet(ovs):
    n = Net(ovs.netns, ovs.sock)
    yield n
    await n.aclose()


@pytest.mark.ovs
async def test_ovs_bridge_options_internal_entry_and_port_vlans(onet: Net, ovs) -> None:
    await onet.converge(load("ovs-bridge.yml"))
    assert ovs.vsctl("list-br").split() == ["ovs-br0"]
    assert set(ovs.vsctl("list-ports", "ovs-br0").split()) == {"eth5", "eth6", "ovs0"}

    def col(table: str, row: str, column: str) -> str:
        return ovs.vsctl("get", table, row, column).strip().strip('"')

    assert [col("Bridge", "ovs-br0", c) for c in ("stp_enable", "rstp_enable", "mcast_snooping_enable", "fail_mode")] \
        == ["false", "true", "true", "secure"]
    assert (col("Port", "eth5", "tag"), col("Port", "eth5", "vlan_mode")) == ("100", "access")
    assert (col("Port", "eth6", "trunks"), col("Port", "eth6", "vlan_mode")) == ("[101, 200, 201, 202, 203]", "trunk")
    assert addrs_of(ovs.netns, "ovs-br0") == {"192.0.2.1/24"}
    assert addrs_of(ovs.netns, "ovs0") == {"198.51.100.1/24"} and link(ovs.netns, "ovs0")["mtu"] == 1400
    _desired, again = await onet.plan(load("ovs-bridge.yml"))
    assert again == []
    # Changing an option and a tag changes only those.
    doc = load("ovs-bridge.yml")
    doc["interfaces"][2]["bridge"]["options"]["fail-mode"] = "standalone"
    doc["interfaces"][2]["bridge"]["port"][1]["vlan"]["tag"] = 200
    _desired, changes = await onet.plan(doc)
    assert [c.summary() for c in changes] and len(changes) == 2, [c.summary() for c in changes]
    await onet.converge(doc)
    assert (col("Bridge", "ovs-br0", "fail_mode"), col("Port", "eth5", "tag")) == ("standalone", "200")


def op_dbus(netns: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "op_dbus", "--state-dir", str(tmp / "state"), "--netns", netns,
            "--ovsdb", str(tmp / "no-ovsdb.sock"), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


async def test_introspect_format_nmstate_round_trips(net: Net, netns: str, tmp_path: Path) -> None:
    await net.converge(load("linux-bridge-stp.yml"))
    await net.converge(load("static-routes.yml"))
    res = op_dbus(netns, tmp_path, "introspect", "net", "--format", "nmstate")
    assert res.returncode == 0, res.stderr
    written = yaml.safe_load(res.stdout)
    br0 = next(i for i in written["interfaces"] if i["name"] == "br0")
    assert br0["bridge"]["options"]["stp"]["forward-delay"] == 10
    assert br0["bridge"]["port"][0]["stp-path-cost"] == 150
    assert br0["ipv4"]["address"] == [{"ip": "192.0.2.251", "prefix-length": 24}]
    assert {"destination": "198.18.10.0/24", "metric": 0, "route-type": "blackhole"} in written["routes"]["config"]
    # The nmstate file, unchanged under plugins.net, is what the system already is.
    state = tmp_path / "state.yml"
    state.write_text(yaml.safe_dump({"version": 1, "plugins": {"net": written}}))
    state.chmod(0o600)
    res = op_dbus(netns, tmp_path, "diff", str(state))
    assert res.returncode == 0, res.stdout + res.stderr
    assert op_dbus(netns, tmp_path, "introspect", "systemd", "--format", "nmstate").returncode == 2


async def test_unimplemented_nmstate_is_refused_by_name_and_changes_nothing(net: Net, netns: str,
                                                                            tmp_path: Path) -> None:
    before = ip_json(netns, "link")
    doc = load("vxlan.yml")
    doc["hostname"] = {"config": "web1"}
    doc["interfaces"][0]["ethtool"] = {"feature": {"rx-gro": True}}
    state = tmp_path / "state.yml"
    state.write_text(yaml.safe_dump({"version": 1, "plugins": {"net": doc}}))
    state.chmod(0o600)
    res = op_dbus(netns, tmp_path, "apply", str(state))
    assert res.returncode == 2, res.stdout + res.stderr
    out = res.stdout + res.stderr
    assert "hostname: valid nmstate syntax that op-dbus does not implement" in out
    assert "interfaces[0].ethtool: valid nmstate syntax that op-dbus does not implement" in out
    assert "Extra inputs" not in out and "unknown" not in out.lower()
    assert ip_json(netns, "link") == before


def rules(netns: str, *args: str) -> list[dict]:
    return [r for r in ip_json(netns, *args, "rule", "show") if r["priority"] not in (0, 32766, 32767)]


async def test_route_rules_added_matched_and_removed(net: Net, netns: str) -> None:
    await net.converge(load("policy-routing.yml"))
    v4 = {(r["priority"], r.get("src"), r.get("dst"), r.get("fwmark"), r.get("fwmask"), r.get("table"),
           r.get("action")) for r in rules(netns)}
    assert v4 == {(1000, "192.168.3.2", None, None, None, "200", None),
                  (1100, "all", "198.51.100.0", "0x10", "0xff", "200", None),
                  (1200, "all", "203.0.113.0", None, None, "main", "prohibit")}
    assert [(r["priority"], r["src"], r["srclen"], r["table"]) for r in rules(netns, "-6")] == \
        [(1000, "2001:db8:b::", 64, "200")]
    _desired, again = await net.plan(load("policy-routing.yml"))
    assert again == []
    # nmstate's absent entry: every rule looking up table 200, whatever else it selects on, in both families.
    changes, undo = await net.converge({"route-rules": {"config": [{"route-table": 200, "state": "absent"}]}})
    assert len(changes) == 3 and {c.action for c in changes} == {"remove-rule"}
    assert [r["priority"] for r in rules(netns)] == [1200] and rules(netns, "-6") == []
    await net.rollback(undo)
    assert len(rules(netns)) == 3 and len(rules(netns, "-6")) == 1


async def test_dns_resolver_in_a_namespace_is_refused_by_check(net: Net, netns: str) -> None:
    from op_dbus.plugins.net import NetSection

    doc = load("vxlan.yml")
    doc["dns-resolver"] = {"config": {"server": ["192.0.2.53"], "search": ["example.com"]}}
    problems = await net.plugin.check(NetSection.model_validate(doc), net.ctx)
    assert [p.path for p in problems] == ["plugins.net.dns-resolver"]
    assert "systemd-resolved serves the host's own network namespace" in problems[0].message
    assert not has_link(netns, "vxlan102")


async def test_ethernet_spelling_of_a_veth(net: Net, netns: str) -> None:
    # nmstate 1.x writes a veth as type ethernet, with or without its veth section.
    await net.converge({"interfaces": [{"name": "veth1", "type": "ethernet", "state": "up",
                                        "veth": {"peer": "veth1peer"}}]})
    assert link(netns, "veth1")["linkinfo"]["info_kind"] == "veth"
    await net.converge({"interfaces": [{"name": "veth1peer", "type": "ethernet", "state": "up", "mtu": 1400}]})
    assert link(netns, "veth1peer")["mtu"] == 1400
