"""Carry out `net` changes: netlink runs batched on one socket, every OVS change in one transaction, DHCP handed over.

Each change's inverse goes into the undo log just before its request is sent and is taken out
again if the kernel (or ovsdb-server, for the whole transaction) refuses the request, so the log
holds exactly what took effect.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from op_dbus.backends import dhcp
from op_dbus.backends import netlink as nl
from op_dbus.backends.ovsdb import Ovsdb, OvsdbError, named, oset, uuid
from op_dbus.errors import BackendError, InvalidInput
from op_dbus.plugin import Change, UndoLog

from .model import KERNEL_KINDS
from .query import OvsView, read_ovs

NetlinkOpener = Callable[[str | None], Awaitable[nl.Netlink]]
OvsdbOpener = Callable[[str | None], Awaitable[Ovsdb]]

def backend_of(change: Change) -> str:
    op = change.payload["op"]
    if op.startswith("ovs_"):
        return "ovs"
    if op == "dns":
        return "dns"
    return "dhcp" if op == "dhcp" else "netlink"


def inverse(change: Change) -> Change | None:
    undo = change.payload.get("undo")
    if undo is None:
        return None
    names = {"create": "remove", "remove": "create", "add-address": "remove-address", "remove-address": "add-address",
             "add-rule": "remove-rule", "remove-rule": "add-rule",
             "add-route": "remove-route", "remove-route": "add-route", "add-port": "remove-port",
             "remove-port": "add-port", "start-dhcp": "stop-dhcp", "stop-dhcp": "start-dhcp"}
    return Change(change.plugin, change.object, names.get(change.action, change.action), before=change.after,
                  after=change.before, payload=dict(undo))


def _forget(undo: UndoLog, entry: Change | None) -> None:
    if entry is not None:
        for i in range(len(undo.entries) - 1, -1, -1):
            if undo.entries[i] is entry:
                del undo.entries[i]
                return


# --- netlink ---

class _NetlinkRun:
    """Turns a run of netlink changes into as few batches as name -> ifindex resolution allows."""

    def __init__(self, sock: nl.Netlink, undo: UndoLog) -> None:
        self.nl = sock
        self.undo = undo
        self.index: dict[str, int] = {}
        self.pending: list[tuple[Change, nl.Request, Change | None]] = []
        self.errors: list[str] = []
        self.first_error: nl.Reply | None = None
        self.fds: list[int] = []

    def resolve(self, names: list[str]) -> None:
        missing = [n for n in names if n and n not in self.index]
        if not missing:
            return
        self.flush()
        self.index.update(self.nl.indexes(missing))
        for n in missing:
            if n not in self.index:
                raise InvalidInput(f"interface {n!r} does not exist")

    def queue(self, change: Change, req: nl.Request) -> None:
        entry = inverse(change)
        if entry is not None:
            self.undo.record(entry)
        self.pending.append((change, req, entry))

    def flush(self) -> None:
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        try:
            replies = self.nl.batch([req for _c, req, _e in batch])
        except nl.NetlinkOverrun as overrun:
            self._overrun(batch, overrun)
            raise
        for (change, _req, entry), reply in zip(batch, replies, strict=True):
            if reply.error and _already_gone(change, reply):
                continue
            if reply.error:
                _forget(self.undo, entry)
                self.errors.append(_describe_failure(change, reply))
                if self.first_error is None:
                    self.first_error = reply
        if self.errors:
            # Later runs may depend on what failed: stop here; the undo log holds what did take effect.
            shown = "; ".join(self.errors[:10]) + (f"; and {len(self.errors) - 10} more" if len(self.errors) > 10 else "")
            raise nl.NetlinkError(shown, errno=self.first_error.error,  # type: ignore[union-attr]
                                  ext=self.first_error.ext)  # type: ignore[union-attr]

    def _overrun(self, batch: list[tuple[Change, nl.Request, Change | None]], overrun: nl.NetlinkOverrun) -> None:
        """Replies were dropped: keep the inverse of every request that may have taken effect.

        An unanswered request may or may not have been carried out, so its inverse stays in the undo log marked
        `outcome_unknown`: replaying it tolerates finding the object already as it should be. The engine then
        re-reads the state and converges to the checkpoint for whatever is still different.
        """
        replies = overrun.replies or [nl.Reply() for _ in batch]
        for (_change, _req, entry), reply in zip(batch, replies, strict=True):
            if reply.done and reply.error:
                _forget(self.undo, entry)
            elif not reply.done and entry is not None:
                entry.payload["outcome_unknown"] = True

    def run(self, changes: list[Change]) -> None:
        for i, change in enumerate(changes):
            p = change.payload
            op = p["op"]
            if i and changes[i - 1].payload["op"] == "link_add" and op != "link_add":
                # Creation is what an unsupported kernel refuses: learn that before changing anything else.
                self.flush()
            if op == "addr":
                self.resolve([p["ifname"]])
                flags = nl.IFA_F_NODAD if p.get("nodad") else 0
                self.queue(change, nl.addr_req(p["add"], self.index[p["ifname"]], p["ip"], p["prefix"], flags=flags))
            elif op == "route":
                self.resolve([p["oif"]] if p.get("oif") else [])
                dst, _, plen = p["dst"].partition("/")
                zero = dst in ("0.0.0.0", "::") and plen == "0"
                self.queue(change, nl.route_req(
                    p["add"], None if zero else dst, int(plen),
                    family=socket.AF_INET if ":" not in dst else socket.AF_INET6, gateway=p.get("gateway"),
                    oif=self.index[p["oif"]] if p.get("oif") else 0, priority=p["metric"], table=p["table"],
                    rtype=nl.ROUTE_TYPES[p.get("type") or "unicast"], prefsrc=p.get("source"),
                    metrics=p.get("metrics")))
            elif op == "link_set":
                master = p.get("master")
                if master:
                    self.resolve([master])
                self.queue(change, nl.link_set(p["ifname"], up=p.get("up"), mtu=p.get("mtu"), mac=p.get("mac"),
                                               master=None if master is None else (self.index[master] if master else 0)))
            elif op == "link_add":
                self.queue(change, self._link_add(p))
                self.index.pop(p["ifname"], None)
            elif op == "rule":
                self.queue(change, nl.rule_req(
                    p["add"], socket.AF_INET if p["family"] == 4 else socket.AF_INET6, src=p.get("src"),
                    src_len=p["src_len"], dst=p.get("dst"), dst_len=p["dst_len"], table=p.get("table") or nl.RT_TABLE_MAIN,
                    action=nl.RULE_ACTIONS.get(p.get("action") or "", nl.FR_ACT_TO_TBL), priority=p.get("priority"),
                    fwmark=p.get("fwmark"), fwmask=p.get("fwmask"), iif=p.get("iif")))
            elif op == "bridge_set":
                self.queue(change, nl.link_set_info(p["ifname"], "bridge", nl.bridge_data(p["options"])))
            elif op == "bridge_port_set":
                self.queue(change, nl.link_set_info(p["ifname"], "", port_kind="bridge",
                                                    port_data=nl.bridge_port_data(p["options"])))
            elif op == "link_del":
                self.queue(change, nl.link_del(p["ifname"]))
                self.index.pop(p["ifname"], None)
            else:
                raise InvalidInput(f"unknown net operation {op!r}")
        self.flush()

    def _link_add(self, p: dict[str, Any]) -> nl.Request:
        itype = p["type"]
        kind = KERNEL_KINDS[itype]
        data = b""
        link = 0
        if itype == "veth":
            peer = p["veth"]
            fd = None
            if peer.get("peer-netns"):
                # The kernel reads the fd when it handles the request: it stays open until the run ends.
                fd = nl.open_netns(peer["peer-netns"])
                self.fds.append(fd)
            data = nl.veth_data(peer["peer"], peer_netns_fd=fd)
        elif itype == "vxlan":
            v = p["vxlan"]
            base = v.get("base-iface")
            if base:
                self.resolve([base])
            data = nl.vxlan_data(v["id"], remote=v.get("remote"), local=v.get("local"),
                                 link=self.index[base] if base else 0, port=v.get("destination-port"))
        elif itype in ("macvlan", "vlan"):
            v = p[itype]
            self.resolve([v["base-iface"]])
            link = self.index[v["base-iface"]]
            if itype == "macvlan":
                data = nl.attr_u32(nl.IFLA_MACVLAN_MODE, nl.MACVLAN_MODES[v.get("mode", "bridge")])
                if v.get("promiscuous") is False:
                    data += nl.attr(nl.IFLA_MACVLAN_FLAGS, nl.MACVLAN_FLAG_NOPROMISC.to_bytes(2, "little"))
            else:
                data = nl.attr(nl.IFLA_VLAN_ID, int(v["id"]).to_bytes(2, "little"))
        elif itype == "bond" and p.get("bond"):
            data = nl.attr(nl.IFLA_BOND_MODE, bytes([nl.BOND_MODES[p["bond"]["mode"]]]))
        master = p.get("master")
        if master:
            self.resolve([master])
        return nl.link_add(p["ifname"], kind, data=data, link=link, mtu=p.get("mtu"), mac=p.get("mac"),
                           up=bool(p.get("up")), master=self.index[master] if master else 0)


def _already_gone(change: Change, reply: nl.Reply) -> bool:
    """A removal whose object the kernel already dropped as a consequence of an earlier one.

    Deleting a primary IPv4 address also deletes the secondaries of its subnet (unless
    promote_secondaries is set); the inverse stays recorded, since it is the plan that removed them.
    """
    p = change.payload
    if p["op"] == "addr" and not p["add"]:
        return reply.error == errno.EADDRNOTAVAIL
    if p["op"] == "route" and not p["add"]:
        return reply.error == errno.ESRCH
    if p["op"] == "rule" and not p["add"]:
        return reply.error == errno.ENOENT
    if p.get("outcome_unknown") and p["op"] in ("addr", "route") and p["add"]:
        # The inverse of a removal whose reply was lost (see _NetlinkRun._overrun): the removal may never have happened.
        return reply.error == errno.EEXIST
    return False


def _describe_failure(change: Change, reply: nl.Reply) -> str:
    p = change.payload
    if p["op"] == "link_add" and reply.error == errno.EOPNOTSUPP:
        return (f"{change.summary()}: the kernel does not support interface type {p['type']!r} "
                f"(creating {p['ifname']!r}): {reply.describe()}")
    return f"{change.summary()}: {reply.describe()}"


def run_netlink(sock: nl.Netlink, changes: list[Change], undo: UndoLog) -> None:
    runner = _NetlinkRun(sock, undo)
    try:
        runner.run(changes)
    finally:
        for fd in runner.fds:
            os.close(fd)


# --- OVS ---

def kernel_has_ovs_datapath() -> bool:
    """Whether the kernel offers the OVS datapath (the `ovs_datapath` generic netlink family)."""
    return nl.genl_family_exists("ovs_datapath")


def _iface_row(name: str, internal: bool) -> dict[str, Any]:
    return {"name": name, "type": "internal" if internal else ""}


async def run_ovs(db: Ovsdb, changes: list[Change], undo: UndoLog, timeout: float) -> list[str]:
    """Apply every OVS change in one transaction, wait for ovs-vswitchd, check each new interface.

    Returns the internal devices to bring up once they exist (what an undo entry re-creates as it was).
    """
    view: OvsView = await read_ovs(db)
    ops: list[dict[str, Any]] = []
    added: list[str] = []
    bring_up: list[str] = []
    n = 0
    auto_dp: str | None = None

    def new_port(name: str, is_internal: bool, mtu: int | None = None) -> list[Any]:
        nonlocal n
        n += 1
        iface, port = f"i{n}", f"p{n}"
        row = _iface_row(name, is_internal)
        if mtu:
            row["mtu_request"] = mtu
        ops.append({"op": "insert", "table": "Interface", "row": row, "uuid-name": iface})
        ops.append({"op": "insert", "table": "Port", "row": {"name": name, "interfaces": named(iface)}, "uuid-name": port})
        added.append(name)
        return named(port)

    for change in changes:
        p = change.payload
        op = p["op"]
        if op == "ovs_bridge_add":
            dp = p.get("datapath_type")
            if dp is None:
                if auto_dp is None:
                    auto_dp = "system" if kernel_has_ovs_datapath() else "netdev"
                dp = auto_dp
            ports = [new_port(p["name"], True)]
            ports += [new_port(q["name"], q["internal"], q.get("mtu")) for q in p.get("ports", [])]
            bring_up += [q["name"] for q in p.get("ports", []) if q.get("up")] + ([p["name"]] if p.get("up") else [])
            n += 1
            br = f"b{n}"
            ops.append({"op": "insert", "table": "Bridge", "uuid-name": br,
                        "row": {"name": p["name"], "ports": oset(ports), "datapath_type": dp}})
            ops.append({"op": "mutate", "table": "Open_vSwitch", "where": [],
                        "mutations": [["bridges", "insert", oset([named(br)])]]})
        elif op == "ovs_bridge_del":
            if p["name"] not in view.bridge_uuid:
                raise BackendError(f"{change.summary()}: OVS has no bridge {p['name']!r}")
            ops.append({"op": "mutate", "table": "Open_vSwitch", "where": [],
                        "mutations": [["bridges", "delete", oset([uuid(view.bridge_uuid[p["name"]])])]]})
        elif op == "ovs_port_add":
            if p.get("up"):
                bring_up.append(p["name"])
            ops.append({"op": "mutate", "table": "Bridge", "where": [["name", "==", p["bridge"]]],
                        "mutations": [["ports", "insert", oset([new_port(p["name"], p["internal"], p.get("mtu"))])]]})
        elif op == "ovs_port_del":
            port_uuid = view.port_uuid.get(p["name"])
            if port_uuid is None:
                raise BackendError(f"{change.summary()}: OVS has no port {p['name']!r}")
            ops.append({"op": "mutate", "table": "Bridge", "where": [["name", "==", p["bridge"]]],
                        "mutations": [["ports", "delete", oset([uuid(port_uuid)])]]})
        elif op == "ovs_bridge_set":
            ops.append({"op": "update", "table": "Bridge", "where": [["name", "==", p["name"]]],
                        "row": {"datapath_type": p["datapath_type"]}})
        elif op == "ovs_bridge_options":
            row = {k: (oset([v] if v else []) if k == "fail_mode" else v) for k, v in p["row"].items()}
            ops.append({"op": "update", "table": "Bridge", "where": [["name", "==", p["name"]]], "row": row})
        elif op == "ovs_port_vlan":
            r = p["row"]
            ops.append({"op": "update", "table": "Port", "where": [["name", "==", p["name"]]],
                        "row": {"tag": oset([] if r["tag"] is None else [r["tag"]]), "trunks": oset(r["trunks"]),
                                "vlan_mode": oset([r["vlan_mode"]] if r["vlan_mode"] else [])}})
        elif op == "ovs_mtu":
            ops.append({"op": "update", "table": "Interface", "where": [["name", "==", p["name"]]],
                        "row": {"mtu_request": oset([p["mtu"]] if p.get("mtu") else [])}})
        else:
            raise InvalidInput(f"unknown OVS operation {op!r}")

    entries = [e for e in (inverse(c) for c in changes) if e is not None]
    for e in entries:
        undo.record(e)
    try:
        await db.transact_and_wait(ops, timeout)
    except OvsdbError:
        # The transaction was refused as a whole: nothing of it took effect.
        for e in entries:
                _forget(undo, e)
        raise
    if added:
        rows = await db.select("Interface", ["name", "error", "ofport"])
        problems = []
        for row in rows:
            if row["name"] not in added:
                continue
            err = row["error"] if isinstance(row["error"], str) else None
            ofport = row["ofport"] if isinstance(row["ofport"], int) else None
            if err or ofport == -1:
                problems.append(f"{row['name']}: {err or 'ovs-vswitchd could not add it (ofport -1)'}")
        if problems:
            raise BackendError("ovs-vswitchd could not set up port(s): " + "; ".join(problems),
                               hint="does the named device exist in the namespace where ovs-vswitchd runs?")
    return bring_up


# --- DHCP ---

def run_dhcp(changes: list[Change], undo: UndoLog, netns: str | None) -> None:
    netns_ino = dhcp.netns_inode(netns)
    for change in changes:
        p = change.payload
        if not p["start"]:
            dhcp.stop(p["ifname"], p["family"], netns_ino)
            continue
        if dhcp.find_client() is None:
            raise BackendError(f"{change.summary()}: no DHCP client found (looked for {', '.join(dhcp.CLIENTS)})",
                               hint=dhcp.INSTALL_HINT)
        entry = inverse(change)
        if entry is not None:
            undo.record(entry)
        try:
            dhcp.start(p["ifname"], p["family"], netns, netns_ino)
        except BackendError as exc:
            _forget(undo, entry)
            raise BackendError(f"{change.summary()}: {exc}") from exc
