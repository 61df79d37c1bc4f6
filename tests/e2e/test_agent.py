"""The agent as a systemd service in the lab: installed by install.sh (offline, from the lab's /wheels) in each of
the deployment guide's modes, started by the lab's systemd, and tested against changes made behind its back with
the system's own tools (systemctl, busctl, ip, ovs-vsctl)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import systemctl

ROOT = Path(__file__).resolve().parents[2]
EXE = "/opt/op-dbus/bin/op-dbus"
STATE = "/etc/op-dbus/state.json"
NET = {"interfaces": [
    {"name": "agbr0", "type": "linux-bridge", "state": "up", "ports": ["agv0"],
     "ipv4": {"enabled": True, "address": [{"ip": "198.18.9.1", "prefix": 24}]}},
    {"name": "agv0", "type": "veth", "state": "up", "veth": {"peer": "agv1"}},
    {"name": "agv2", "type": "veth", "state": "up", "veth": {"peer": "agv3"}},
    {"name": "agovs0", "type": "ovs-bridge", "ports": ["agv2"]},
]}
UNITS = {"nginx.service": {"active_state": "active", "enabled": True},
         "app-worker.service": {"active_state": "inactive"}}


def document(units: dict[str, Any] | None = None, net: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "plugins": {"systemd": {"units": units or UNITS}}}
    if net is not None:
        doc["plugins"]["net"] = net
    return doc


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class Box:
    """The lab machine with the installer copied in, and the commands the tests use."""

    def __init__(self, lab: Any) -> None:
        self.lab = lab
        src = lab.root / "root/op-dbus-install"
        src.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "install.sh", src / "install.sh")
        shutil.copytree(ROOT / "packaging", src / "packaging", dirs_exist_ok=True)
        (lab.root / "etc/op-dbus").mkdir(exist_ok=True)
        self.user = "root"

    def install(self, *args: str) -> Any:
        r = self.lab.run(["sh", "/root/op-dbus-install/install.sh", "--wheelhouse", "/wheels", "--watchdog", "3",
                          *args], check=False, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        return r

    def run(self, *argv: str, check: bool = True) -> Any:
        return self.lab.run(list(argv), check=check)

    def op(self, *args: str) -> Any:
        # the log belongs to the agent's user; op-dbus refuses a state dir another non-root user owns
        prefix = ["runuser", "-u", self.user, "--"] if self.user != "root" else []
        return self.lab.run([*prefix, EXE, *args], check=False)

    def write_state(self, doc: dict[str, Any]) -> None:
        f = self.lab.root / STATE.lstrip("/")
        tmp = f.with_name("state.json.new")
        tmp.write_text(json.dumps(doc))
        tmp.chmod(0o600)
        tmp.rename(f)

    def blocks(self) -> list[dict[str, Any]]:
        r = self.op("-o", "json", "blockchain", "list")
        return json.loads(r.stdout) if r.returncode == 0 else []

    def block(self, index: int) -> dict[str, Any]:
        r = self.op("-o", "json", "blockchain", "show", str(index))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def new_blocks(self, since: int, kind: str, mentions: str) -> list[dict[str, Any]]:
        found = []
        for b in self.blocks()[since:]:
            if b["kind"] == kind:
                full = self.block(b["index"])
                if mentions in json.dumps(full["changes"]):
                    found.append(full)
        return found

    def status(self) -> dict[str, Any]:
        r = self.op("-o", "json", "status")
        return json.loads(r.stdout)  # type: ignore[no-any-return]

    def main_pid(self) -> int:
        return int(self.run("systemctl", "show", "-P", "MainPID", "op-dbus.service").stdout.strip())

    def journal(self) -> str:
        return str(self.run("journalctl", "-u", "op-dbus.service", "--no-pager", "-o", "cat", check=False).stdout)

    def links(self) -> set[str]:
        out = str(self.run("ip", "-o", "link").stdout)
        return {line.split()[1].rstrip(":").split("@")[0] for line in out.splitlines()}

    def addresses(self, dev: str) -> str:
        return str(self.run("ip", "-o", "addr", "show", "dev", dev, check=False).stdout)

    def ovs_ports(self, bridge: str) -> list[str]:
        return str(self.run("ovs-vsctl", "list-ports", bridge, check=False).stdout).split()


@pytest.fixture(scope="module")
def box(lab: Any) -> Box:
    b = Box(lab)
    b.write_state(document(net=NET))
    # converge once by hand, so the agent starts from a system that matches its state file
    assert b.lab.run(["sh", "-c", f"python3 -m venv /opt/op-dbus && /opt/op-dbus/bin/pip install -q --no-index "
                                  f"--find-links /wheels op-dbus && {EXE} apply {STATE}"], check=False,
                     timeout=300).returncode == 0
    return b


async def test_property_changes_of_any_service_are_seen(lab: Any) -> None:
    # the backend piece for declared properties of any D-Bus service (login1 here), seen from the host
    from op_dbus.backends import dbus

    client = dbus.Client(await dbus.connect(lab.bus_address))
    try:
        changes = client.property_changes("org.freedesktop.login1", {"/org/freedesktop/login1": {"BlockInhibited"}})
        assert await anext(changes) is None  # subscribed
        lab.run(["systemd-inhibit", "--what=shutdown", "--mode=block", "sleep", "0.1"])
        got = await asyncio.wait_for(anext(changes), 5)
        assert got == ("/org/freedesktop/login1", "org.freedesktop.login1.Manager", {"BlockInhibited"})
        await changes.aclose()
    finally:
        client.bus.disconnect()


def test_shadow_records_a_stopped_unit_and_changes_nothing(box: Box) -> None:
    box.install("--no-proxmox")
    assert systemctl(box.lab, "is-active", "op-dbus.service") == ["active"]
    st = box.status()
    assert st["running"] and st["mode"] == "shadow" and st["ready"] and st["log"]
    assert st["watching"] == {"net": "watching", "systemd": "watching"}
    since = len(box.blocks())
    box.run("systemctl", "stop", "nginx.service")
    (block,) = wait_for("a drift block naming nginx", lambda: box.new_blocks(since, "drift", "nginx.service"))
    change = next(c for c in block["changes"] if c["object"] == "nginx.service")
    assert change["before"] == {"active_state": "active"} and change["after"] == {"active_state": "inactive"}
    assert block["meta"]["mode"] == "shadow"
    time.sleep(1.0)
    assert systemctl(box.lab, "is-active", "nginx.service") == ["inactive"]  # shadow: nothing repaired
    assert box.status()["open_drift"] == 1
    text = box.op("status").stdout
    assert "op-dbus agent: running" in text and "shadow" in text and "drift: start nginx.service" in text, text
    box.run("systemctl", "start", "nginx.service")  # put back by hand: recorded as resolved
    wait_for("the drift to be resolved", lambda: box.status()["open_drift"] == 0)


# A bus client that stays connected a moment after its call, as a long-lived tool or service would: a client that
# exits at once (busctl) is still named by pid, uid and method, but its command line may be gone before it is read.
STOP_NGINX_CLIENT = """
import asyncio
from dbus_fast import BusType, Message
from dbus_fast.aio import MessageBus
async def main():
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    await bus.call(Message(destination="org.freedesktop.systemd1", path="/org/freedesktop/systemd1",
                           interface="org.freedesktop.systemd1.Manager", member="StopUnit", signature="ss",
                           body=["nginx.service", "replace"]))
    await asyncio.sleep(2)
asyncio.run(main())
"""


def test_shadow_names_who_changed_a_unit_over_the_bus(box: Box) -> None:
    # root's systemctl talks to systemd over its private socket; a client of the bus can be named
    since = len(box.blocks())
    box.run("/opt/op-dbus/bin/python", "-c", STOP_NGINX_CLIENT)
    (block,) = wait_for("a drift block naming nginx", lambda: box.new_blocks(since, "drift", "nginx.service"))
    who = block["actor"]
    assert who.get("method") == "StopUnit" and who.get("uid") == 0, who
    assert "python" in who.get("command", "") and "StopUnit" in who.get("command", ""), who
    box.run("systemctl", "start", "nginx.service")
    wait_for("the drift to be resolved", lambda: box.status()["open_drift"] == 0)


def test_shadow_detects_a_disabled_unit(box: Box) -> None:
    since = len(box.blocks())
    box.run("systemctl", "disable", "nginx.service")  # UnitFilesChanged, no unit state change
    (block,) = wait_for("a drift block naming nginx", lambda: box.new_blocks(since, "drift", "nginx.service"))
    change = next(c for c in block["changes"] if c["object"] == "nginx.service")
    assert change["before"] == {"enabled": True} and change["after"] == {"enabled": False}
    assert "systemd1 UnitFilesChanged" in block["meta"]["sources"] or "systemd1 Reloading" in block["meta"]["sources"]
    box.run("systemctl", "enable", "nginx.service")
    wait_for("the drift to be resolved", lambda: box.status()["open_drift"] == 0)


def test_shadow_detects_a_removed_address_and_bridge_port(box: Box) -> None:
    since = len(box.blocks())
    box.run("ip", "addr", "del", "198.18.9.1/24", "dev", "agbr0")
    (block,) = wait_for("a drift block naming agbr0", lambda: box.new_blocks(since, "drift", "agbr0"))
    assert block["actor"]["netlink_portid"] > 0  # the requesting socket: `ip`'s pid (named if still running)
    since = len(box.blocks())
    box.run("ovs-vsctl", "del-port", "agovs0", "agv2")
    wait_for("a drift block naming agovs0", lambda: box.new_blocks(since, "drift", "agovs0"))
    time.sleep(0.5)
    assert "198.18.9.1" not in box.addresses("agbr0") and box.ovs_ports("agovs0") == []


def test_enforce_repairs_what_shadow_recorded_and_then_a_stopped_unit(box: Box) -> None:
    since = len(box.blocks())
    box.install("--no-proxmox", "--mode", "enforce", "--metrics", "127.0.0.1:9469")  # again: idempotent, enforcing
    assert box.status()["mode"] == "enforce"
    # the address and the port removed under shadow mode are restored at start
    wait_for("the address back", lambda: "198.18.9.1/24" in box.addresses("agbr0"))
    wait_for("the port back", lambda: box.ovs_ports("agovs0") == ["agv2"])
    assert box.new_blocks(since, "apply", "agbr0")
    since = len(box.blocks())
    box.run("systemctl", "stop", "nginx.service")
    wait_for("nginx running again", lambda: systemctl(box.lab, "is-active", "nginx.service") == ["active"])
    (repair,) = wait_for("the repair block", lambda: box.new_blocks(since, "apply", "nginx.service"))
    (drift,) = box.new_blocks(since, "drift", "nginx.service")
    assert repair["meta"]["repairs"] == drift["index"] and repair["meta"]["agent"] == "enforce"
    assert [c["action"] for c in repair["changes"]] == ["start"]
    assert box.op("verify", "--full").returncode == 0
    metrics = box.run("/opt/op-dbus/bin/python", "-c",
                      "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9469/metrics').read().decode())")
    assert 'opdbus_agent_drift_total{plugin="systemd"} 1' in metrics.stdout
    assert "opdbus_agent_applies_total 2" in metrics.stdout  # the net repair at start, then nginx
    assert "opdbus_agent_repair_latency_seconds_count 1" in metrics.stdout


def test_enforce_restores_a_deleted_address_and_bridge_port(box: Box) -> None:
    since = len(box.blocks())
    box.run("ip", "addr", "del", "198.18.9.1/24", "dev", "agbr0")
    wait_for("the address back", lambda: "198.18.9.1/24" in box.addresses("agbr0"))
    box.run("ovs-vsctl", "del-port", "agovs0", "agv2")
    wait_for("the port back", lambda: box.ovs_ports("agovs0") == ["agv2"])
    assert box.new_blocks(since, "apply", "agbr0") and box.new_blocks(since, "apply", "agovs0")


def test_a_changed_state_file_is_reloaded_and_applied(box: Box) -> None:
    units = {**UNITS, "app-worker.service": {"active_state": "active"}}
    box.write_state(document(units, NET))
    wait_for("app-worker started", lambda: systemctl(box.lab, "is-active", "app-worker.service") == ["active"])
    assert "reloaded the state file" in box.journal()
    # SIGHUP (systemctl reload) reloads too
    box.write_state(document(UNITS, NET))
    box.run("systemctl", "reload", "op-dbus.service")
    wait_for("app-worker stopped", lambda: systemctl(box.lab, "is-active", "app-worker.service") == ["inactive"])


def test_an_invalid_state_file_is_refused_and_the_old_one_kept(box: Box) -> None:
    box.write_state({"version": 1, "plugins": {"systemd": {"units": {"nginx.service": {"active_state": "up"}}}}})
    wait_for("the refusal", lambda: "reload-refused" in box.journal())
    box.run("systemctl", "stop", "nginx.service")
    wait_for("nginx running again", lambda: systemctl(box.lab, "is-active", "nginx.service") == ["active"])
    reloads = box.journal().count("reloaded the state file (the state file changed)")
    box.write_state(document(UNITS, NET))
    wait_for("the valid file reloaded",
             lambda: box.journal().count("reloaded the state file (the state file changed)") > reloads)


def test_a_manual_apply_is_adopted_not_fought(box: Box) -> None:
    other = {"version": 1, "plugins": {"systemd": {"units": {"nginx.service": {"active_state": "inactive"}}}}}
    f = box.lab.root / "root/other.json"
    f.write_text(json.dumps(other))
    f.chmod(0o600)
    r = box.op("apply", "--wait", "10", "/root/other.json")
    assert r.returncode == 0, r.stderr
    time.sleep(1.5)
    assert systemctl(box.lab, "is-active", "nginx.service") == ["inactive"], box.journal()[-3000:]  # kept
    assert box.status()["adopted_blocks"]
    assert "adopted block" in box.journal()
    box.run("systemctl", "reload", "op-dbus.service")  # the state file is authoritative again
    wait_for("nginx running again", lambda: systemctl(box.lab, "is-active", "nginx.service") == ["active"])


def test_the_watchdog_restarts_a_hung_agent(box: Box) -> None:
    pid = box.main_pid()
    box.run("kill", "-STOP", str(pid))
    new = wait_for("a new agent process", lambda: box.main_pid() not in (0, pid) and box.main_pid(), timeout=40)
    wait_for("the service active again", lambda: systemctl(box.lab, "is-active", "op-dbus.service") == ["active"])
    assert "watchdog" in str(box.run("journalctl", "-u", "op-dbus.service", "--no-pager", check=False).stdout).lower()
    assert new != pid


def test_sigterm_stops_cleanly(box: Box) -> None:
    box.run("systemctl", "stop", "op-dbus.service")
    assert systemctl(box.lab, "is-active", "op-dbus.service") == ["inactive"]  # not "failed"
    assert "op-dbus agent stopped" in box.journal()
    assert box.status()["running"] is False
    box.run("systemctl", "start", "op-dbus.service")


def test_ovsdb_loss_is_reported_and_reconciled_on_return(box: Box) -> None:
    gaps = len(box.status()["gaps"])
    box.run("systemctl", "stop", "ovsdb-server.service")
    wait_for("the gap reported", lambda: len(box.status()["gaps"]) > gaps)
    assert box.status()["watching"]["net"] == "lost"
    # only the net plugin is blind: a unit stopped meanwhile is still seen and repaired
    box.run("systemctl", "stop", "nginx.service")
    wait_for("nginx repaired during the gap", lambda: systemctl(box.lab, "is-active", "nginx.service") == ["active"])
    box.run("systemctl", "start", "openvswitch-switch.service")
    gap = wait_for("the gap closed", lambda: "until" in box.status()["gaps"][-1] and box.status()["gaps"][-1],
                   timeout=40)
    assert gap["plugin"] == "net" and "OVSDB" in gap["error"], gap
    wait_for("the port back", lambda: box.ovs_ports("agovs0") == ["agv2"])


def test_bus_restart_is_survived(box: Box) -> None:
    gaps = len(box.status()["gaps"])
    pid = box.main_pid()
    box.run("systemctl", "restart", "dbus.service")
    wait_for("the gap closed", lambda: len(box.status()["gaps"]) > gaps and "until" in box.status()["gaps"][-1],
             timeout=30)
    assert box.main_pid() == pid  # the same process reconnected
    box.run("systemctl", "stop", "nginx.service")
    wait_for("nginx repaired", lambda: systemctl(box.lab, "is-active", "nginx.service") == ["active"])


def test_read_only_records_but_never_repairs(box: Box) -> None:
    box.install("--no-proxmox", "--read-only", "--mode", "enforce")
    st = box.status()
    assert st["mode"] == "shadow" and st["read_only"] and st["requested_mode"] == "enforce"
    since = len(box.blocks())
    box.run("systemctl", "stop", "nginx.service")
    wait_for("a drift block naming nginx", lambda: box.new_blocks(since, "drift", "nginx.service"))
    time.sleep(1.0)
    assert systemctl(box.lab, "is-active", "nginx.service") == ["inactive"]
    box.run("systemctl", "start", "nginx.service")


def test_uninstall_keeps_the_log(box: Box) -> None:
    box.install("--uninstall")
    assert not (box.lab.root / "etc/systemd/system/op-dbus.service").exists()
    assert not (box.lab.root / "opt/op-dbus").exists()
    assert (box.lab.root / "var/lib/op-dbus/ledger.db").exists()
    assert (box.lab.root / "etc/op-dbus/state.json").exists()  # the test wrote it: not install.sh's to remove


def test_agent_only_keeps_no_log_and_reports_to_the_journal(box: Box) -> None:
    box.run("rm", "-rf", "/var/lib/op-dbus")
    box.install("--agent-only", "--mode", "enforce")
    st = box.status()
    assert st["running"] and st["log"] is False and st["mode"] == "enforce"
    box.run("systemctl", "stop", "nginx.service")
    wait_for("nginx running again", lambda: systemctl(box.lab, "is-active", "nginx.service") == ["active"])
    journal = box.journal()
    assert '"event":"drift"' in journal and '"event":"repaired"' in journal
    assert not (box.lab.root / "var/lib/op-dbus/ledger.db").exists()


def test_full_mode_and_a_dedicated_user_get_the_policy_file(box: Box) -> None:
    box.install("--uninstall", "--purge")
    box.install("--read-only", "--user", "opdbus")
    box.user = "opdbus"
    policy = box.lab.root / "etc/dbus-1/system.d/op-dbus.conf"
    assert 'policy user="opdbus"' in policy.read_text()
    assert box.run("systemctl", "show", "-P", "User", "op-dbus.service").stdout.strip() == "opdbus"
    st = box.status()
    assert st["running"] and st["read_only"]
    # install.sh wrote the state file from introspect (the test's was purged): the system as it is
    doc = json.loads((box.lab.root / STATE.lstrip("/")).read_text())
    assert "nginx.service" in doc["plugins"]["systemd"]["units"]
    since = len(box.blocks())
    box.run("systemctl", "stop", "nginx.service")
    wait_for("a drift block naming nginx", lambda: box.new_blocks(since, "drift", "nginx.service"))
    box.user = "root"
    box.install("--uninstall", "--purge")
    assert not policy.exists() and not (box.lab.root / "var/lib/op-dbus").exists()
