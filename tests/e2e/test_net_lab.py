"""The deployment guide's "Enterprise Network Infrastructure" example, applied by op-dbus inside the lab machine.

op-dbus runs inside the lab as root, against the lab's own kernel and its own Open vSwitch, which the lab's
systemd runs as real services (ovsdb-server, ovs-vswitchd). The lab boots with --private-network, so every
interface, address and packet below lives in the lab's own network namespace and the namespaces made inside it.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from tests.e2e.helpers import install_unit, systemctl

# The example verbatim, bridge addresses included: 10.0.0.0/24 and 192.168.1.0/24 are private ranges, but with
# --private-network they exist only inside the lab's own network namespace and never reach the host or a wire.
EXAMPLE = {
    "version": 1,
    "plugins": {
        "net": {"interfaces": [
            {"name": "core-sw1", "type": "ovs-bridge", "ports": ["eth0", "eth1", "eth2"],
             "ipv4": {"enabled": True, "address": [{"ip": "10.0.0.1", "prefix": 24}]}},
            {"name": "dmz-sw", "type": "ovs-bridge", "ports": ["eth3"],
             "ipv4": {"enabled": True, "address": [{"ip": "192.168.1.1", "prefix": 24}]}},
        ]},
        "systemd": {"units": {
            "firewalld.service": {"active_state": "active", "enabled": True},
            "fail2ban.service": {"active_state": "active", "enabled": True},
        }},
    },
}
STATE = "/etc/op-dbus/network.json"

# Port -> (namespace holding its veth peer, the peer's address). ns-a and ns-b talk across core-sw1 on a
# documentation range (198.18.0.0/15); ns-c and ns-d reach the bridges' own addresses from the example.
PEERS = {
    "eth0": ("ns-a", "198.18.0.10/24"),
    "eth1": ("ns-b", "198.18.0.11/24"),
    "eth2": ("ns-c", "10.0.0.12/24"),
    "eth3": ("ns-d", "192.168.1.13/24"),
}

# The lab has no firewalld or fail2ban: two stand-in units under those names let the example apply whole.
STAND_IN = """[Unit]
Description=Stand-in for {name} in the lab
[Service]
ExecStart=/bin/sleep infinity
[Install]
WantedBy=multi-user.target
"""

# Receives until EOF, then answers with the byte count and the SHA-256 of what arrived.
SERVER = """
import hashlib, json, socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
srv.settimeout(30)
conn, _ = srv.accept()
conn.settimeout(30)
digest, n = hashlib.sha256(), 0
while chunk := conn.recv(1 << 16):
    digest.update(chunk)
    n += len(chunk)
conn.sendall(json.dumps({"bytes": n, "sha256": digest.hexdigest()}).encode())
conn.close()
"""

# Sends SIZE random bytes (retrying the connect while the server starts) and reports what the server saw.
CLIENT = """
import hashlib, json, os, socket, sys, time
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = os.urandom(size)
deadline = time.monotonic() + 10
while True:
    try:
        sock = socket.create_connection((host, port), timeout=30)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.02)
started = time.monotonic()
sock.sendall(data)
sock.shutdown(socket.SHUT_WR)
reply = b""
while chunk := sock.recv(4096):
    reply += chunk
seconds = time.monotonic() - started
print(json.dumps({"sent": size, "sent_sha256": hashlib.sha256(data).hexdigest(), "seconds": seconds,
                  "server": json.loads(reply)}))
"""


def run(lab: Any, *argv: str) -> Any:
    return lab.run(list(argv), check=False)


def sh(lab: Any, script: str) -> str:
    return str(lab.run(["sh", "-ec", script]).stdout)


def tcp(lab: Any, server_ns: str, client_ns: str, address: str, size: int, port: int = 5001) -> dict[str, Any]:
    """Real TCP from `client_ns` to a server in `server_ns` (None: the lab's own namespace) at `address`."""
    where = f"ip netns exec {server_ns} " if server_ns else ""
    script = (f"{where}python3 /root/tcp-server.py {address} {port} & "
              f"ip netns exec {client_ns} python3 /root/tcp-client.py {address} {port} {size}; wait $!")
    return json.loads(sh(lab, script))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def op_dbus(lab: Any) -> str:
    exe = lab.install_op_dbus()
    for name in ("firewalld.service", "fail2ban.service"):
        install_unit(lab, name, STAND_IN.format(name=name.removesuffix(".service")))
    # The machine's "NICs": veths whose peers sit in namespaces, one per port. Checksum offload off on the peers:
    # the userspace (netdev) datapath does not fill in checksums the peer left to the hardware.
    setup = []
    for port, (ns, addr) in PEERS.items():
        setup += [f"ip netns add {ns}", f"ip link add {port} type veth peer name {port}p netns {ns}",
                  f"ip link set {port} up", f"ip -n {ns} link set lo up", f"ip -n {ns} addr add {addr} dev {port}p",
                  f"ip -n {ns} link set {port}p up", f"ip netns exec {ns} ethtool -K {port}p tx off >/dev/null"]
    sh(lab, "\n".join(setup))
    (lab.root / "root/tcp-server.py").write_text(SERVER)
    (lab.root / "root/tcp-client.py").write_text(CLIENT)
    state = lab.root / "etc/op-dbus"
    state.mkdir(mode=0o755, exist_ok=True)
    (state / "network.json").write_text(json.dumps(EXAMPLE, indent=2))
    (state / "network.json").chmod(0o600)
    return exe


def ovs_ports(lab: Any, bridge: str) -> list[str]:
    return sh(lab, f"ovs-vsctl list-ports {bridge}").split()


def bridges(lab: Any) -> dict[str, list[str]]:
    return {b: ovs_ports(lab, b) for b in sh(lab, "ovs-vsctl list-br").split()}


def port_counters(lab: Any, bridge: str) -> dict[str, dict[str, int]]:
    """Byte counters of a bridge's ports, live from ovs-vswitchd (the Interface table's statistics lag by seconds)."""
    out: dict[str, dict[str, int]] = {}
    port = ""
    for line in sh(lab, f"ovs-ofctl --names dump-ports {bridge}").splitlines():
        m = re.match(r'\s*port\s+"?([^":]+)"?:\s+rx pkts=\d+, bytes=(\d+)', line)
        if m:
            port = m.group(1).strip()
            out[port] = {"rx": int(m.group(2))}
        m = re.match(r"\s+tx pkts=\d+, bytes=(\d+)", line)
        if m and port:
            out[port]["tx"] = int(m.group(1))
    return out


def addresses(lab: Any) -> dict[str, set[tuple[str, int]]]:
    return {i["ifname"]: {(a["local"], a["prefixlen"]) for a in i["addr_info"] if a["family"] == "inet"}
            for i in json.loads(sh(lab, "ip -j addr show"))}


def test_apply_the_example(lab: Any, op_dbus: str) -> None:
    assert run(lab, op_dbus, "diff", STATE).returncode == 3
    started = time.monotonic()
    a = run(lab, op_dbus, "-o", "json", "apply", STATE)
    elapsed = time.monotonic() - started
    assert a.returncode == 0, a.stderr
    print(f"apply inside the lab: {elapsed:.2f} s, {len(json.loads(a.stdout)['changes'])} changes")
    assert run(lab, op_dbus, "verify", "--current").returncode == 0

    # The lab's own tools are the oracle.
    show = sh(lab, "ovs-vsctl show")
    listed = re.findall(r'^\s*(Bridge|Port) "?([^"\s]+)"?$', show, re.M)
    assert {n for kind, n in listed if kind == "Bridge"} == {"core-sw1", "dmz-sw"}, show
    assert {n for kind, n in listed if kind == "Port"} == {"core-sw1", "dmz-sw", "eth0", "eth1", "eth2", "eth3"}, show
    assert ovs_ports(lab, "core-sw1") == ["eth0", "eth1", "eth2"]
    assert ovs_ports(lab, "dmz-sw") == ["eth3"]
    # No kernel OVS datapath in this kernel: op-dbus picked the userspace one by probe.
    assert sh(lab, "ovs-vsctl get bridge core-sw1 datapath_type").strip() == "netdev"
    assert sh(lab, "ovs-vsctl get bridge dmz-sw datapath_type").strip() == "netdev"
    addrs = addresses(lab)
    assert addrs["core-sw1"] == {("10.0.0.1", 24)} and addrs["dmz-sw"] == {("192.168.1.1", 24)}
    assert systemctl(lab, "is-active", "firewalld.service", "fail2ban.service") == ["active", "active"]
    assert systemctl(lab, "is-enabled", "firewalld.service", "fail2ban.service") == ["enabled", "enabled"]


def test_tcp_crosses_core_sw1(lab: Any, op_dbus: str) -> None:
    size = 20 << 20
    r = tcp(lab, "ns-a", "ns-b", "198.18.0.10", size)
    assert r["server"] == {"bytes": size, "sha256": r["sent_sha256"]}
    print(f"TCP ns-b -> ns-a across core-sw1: {size} bytes in {r['seconds']:.2f} s")
    # OVS itself switched it: the bridge's port counters saw the 20 MiB come in on eth1 and go out on eth0.
    counters = port_counters(lab, "core-sw1")
    assert counters["eth1"]["rx"] >= size and counters["eth0"]["tx"] >= size, counters
    # The bridges' own addresses answer too: a server in the lab, clients behind eth2 and eth3.
    for client, address in (("ns-c", "10.0.0.1"), ("ns-d", "192.168.1.1")):
        small = tcp(lab, "", client, address, 1 << 20, port=5002)
        assert small["server"]["bytes"] == 1 << 20


def test_second_apply_changes_nothing(lab: Any, op_dbus: str) -> None:
    a = run(lab, op_dbus, "-o", "json", "apply", STATE)
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["changes"] == []


def test_introspect_reapplies_as_a_no_op(lab: Any, op_dbus: str) -> None:
    script = f"umask 077; {op_dbus} introspect > /root/intro.json && {op_dbus} -o json apply /root/intro.json"
    r = lab.run(["sh", "-c", script], check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changes"] == []
    intro = json.loads((lab.root / "root/intro.json").read_text())
    bridges = {i["name"]: i for i in intro["plugins"]["net"]["interfaces"] if i.get("type") == "ovs-bridge"}
    assert bridges["core-sw1"]["ports"] == ["eth0", "eth1", "eth2"] and bridges["dmz-sw"]["ports"] == ["eth3"]


def test_port_removed_behind_its_back_is_drift(lab: Any, op_dbus: str) -> None:
    sh(lab, "ovs-vsctl del-port core-sw1 eth2")
    v = run(lab, op_dbus, "verify", "--current")
    assert v.returncode == 3 and "port eth2 of core-sw1" in v.stdout, (v.stdout, v.stderr)
    a = run(lab, op_dbus, "apply", STATE)
    assert a.returncode == 0, a.stderr
    assert ovs_ports(lab, "core-sw1") == ["eth0", "eth1", "eth2"]
    assert run(lab, op_dbus, "verify", "--current").returncode == 0


def test_a_port_that_does_not_exist_is_refused_before_any_change(lab: Any, op_dbus: str) -> None:
    before = bridges(lab), addresses(lab)
    bad = {"version": 1, "plugins": {"net": {"interfaces": [
        {"name": "core-sw1", "type": "ovs-bridge", "ports": ["eth0", "eth1", "eth2", "eth9"]},
        {"name": "dmz-sw", "state": "absent"}]}}}
    path = lab.root / "etc/op-dbus/bad.json"
    path.write_text(json.dumps(bad))
    path.chmod(0o600)
    a = run(lab, op_dbus, "apply", "/etc/op-dbus/bad.json")
    assert a.returncode == 2 and "plugins.net.interfaces[0].ports[3]" in a.stderr and "'eth9'" in a.stderr, a.stderr
    assert (bridges(lab), addresses(lab)) == before
    assert run(lab, op_dbus, "verify", "--current").returncode == 0
