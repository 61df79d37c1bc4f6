"""Benchmark: the net plugin's netlink and OVSDB paths against what a user would otherwise run (ip, ovs-vsctl).

Run as root from the repository root:  python benchmarks/net.py [--rounds N] [--sweep 10,100,1000,3000,10000]
                                        python benchmarks/net.py --smoke   (one round, tiny sizes, seconds)
Everything happens inside network namespaces and a private OVS instance that the benchmark creates
and removes. Variants run interleaved in the same rounds; medians and ratios are printed. Timing is
reported, never asserted.

The sweep applies N addresses, N routes and N veth pairs three ways, each into a fresh namespace: the
whole `op-dbus apply` as a process (and the no-op `op-dbus diff` after it), the same check/query/diff/
apply/verify in this process (no interpreter start, imports or audit log), and `ip -batch` with the
same objects. The whole-process fixed cost is measured as `op-dbus diff` of an empty net section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from op_dbus.backends import netlink as nl
from op_dbus.backends.ovsdb import Ovsdb, named, oset
from op_dbus.plugin import Context, Settings, UndoLog
from op_dbus.plugins.net import NetPlugin, NetSection

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
SRC = Path(__file__).resolve().parents[1] / "src"


def sh(*argv: str, stdin: str | None = None) -> None:
    subprocess.run(argv, check=True, input=stdin, text=True, capture_output=True)


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


async def atimed(fn: Callable[[], Awaitable[Any]]) -> float:
    t = time.perf_counter()
    await fn()
    return time.perf_counter() - t


class Results:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.samples.setdefault(name, []).append(seconds)

    def median_ms(self, name: str) -> float:
        return statistics.median(self.samples[name]) * 1000

    def line(self, title: str, ours: str, theirs: str, bar: str) -> None:
        a, b = self.median_ms(ours), self.median_ms(theirs)
        print(f"  {title:<58} {a:9.3f} ms  vs {b:9.3f} ms   {b / a:7.1f}x faster   (bar: {bar})")


def new_netns() -> str:
    name = f"opdb-{uuid.uuid4().hex[:6]}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


class PrivateOvs:
    def __init__(self, netns: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="opdb-ovs-"))
        self.sock = str(self.dir / "db.sock")
        env = {**os.environ, **{k: str(self.dir) for k in ("OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR")}}
        sh("ovsdb-tool", "create", str(self.dir / "conf.db"), SCHEMA)
        self.db = subprocess.Popen(["ovsdb-server", str(self.dir / "conf.db"), f"--remote=punix:{self.sock}",
                                    f"--unixctl={self.dir}/db.ctl", f"--log-file={self.dir}/db.log"], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not os.path.exists(self.sock):
            time.sleep(0.005)
        self.vsctl("--no-wait", "init")
        self.vswitchd = subprocess.Popen(["ip", "netns", "exec", netns, "ovs-vswitchd", f"unix:{self.sock}",
                                          f"--unixctl={self.dir}/vs.ctl", f"--log-file={self.dir}/vs.log"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.vsctl("set", "Open_vSwitch", ".", "external_ids:bench=1")

    def vsctl(self, *args: str) -> None:
        sh("ovs-vsctl", f"--db=unix:{self.sock}", "--timeout=30", *args)

    def close(self) -> None:
        for p in (self.vswitchd, self.db):
            p.terminate()
            p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def bench_netlink(ns: str, rounds: int, res: Results) -> None:
    sock = nl.Netlink(ns)
    sh("ip", "-n", ns, "link", "add", "b0", "type", "veth", "peer", "name", "b0p")
    idx = sock.indexes(["b0"])["b0"]
    plugin = NetPlugin()
    ctx = Context(Settings(netns=ns))
    batch_file = Path(tempfile.mktemp(suffix=".batch"))
    batch_file.write_text("".join(f"addr add 198.18.{i // 250}.{i % 250 + 1}/32 dev b0\n" for i in range(100)))
    one = NetSection.model_validate(
        {"interfaces": [{"name": "b0", "ipv4": {"address": [{"ip": "198.19.0.1", "prefix": 32}]}}]})
    hundred = NetSection.model_validate({"interfaces": [{"name": "b0", "ipv4": {"address": [
        {"ip": f"198.18.{i // 250}.{i % 250 + 1}", "prefix": 32} for i in range(100)]}}]})
    empty = NetSection.model_validate({"interfaces": [{"name": "b0", "ipv4": {"address": []}}]})
    current_empty = await plugin.query(ctx, one)
    one_changes = plugin.diff(one, current_empty)
    hundred_changes = plugin.diff(hundred, current_empty)
    assert len(hundred_changes) == 100

    def flush() -> None:
        sock.batch([nl.addr_req(False, a.index, a.ip, a.prefix) for a in sock.addresses(2) if a.index == idx])

    for _ in range(rounds):
        res.add("ip addr add", timed(lambda: sh("ip", "-n", ns, "addr", "add", "198.19.0.1/32", "dev", "b0")))
        flush()
        res.add("codec add 1", timed(lambda: sock.request(nl.addr_req(True, idx, "198.19.0.1", 32), "add")))
        flush()
        res.add("plugin apply 1", await atimed(lambda: plugin.apply(one_changes, ctx, UndoLog())))
        flush()
        res.add("ip -batch 100", timed(lambda: sh("ip", "-n", ns, "-batch", str(batch_file))))
        flush()
        res.add("codec batch 100", timed(lambda: sock.batch(
            [nl.addr_req(True, idx, f"198.18.{i // 250}.{i % 250 + 1}", 32) for i in range(100)])))
        flush()
        res.add("plugin apply 100", await atimed(lambda: plugin.apply(hundred_changes, ctx, UndoLog())))
        flush()
    batch_file.unlink()
    del empty

    # A namespace with about 300 objects for the full read.
    lines = []
    for i in range(27):
        lines.append(f"link add r{i} type veth peer name r{i}p")
        lines.append(f"link set r{i} up")
        lines.append(f"addr add 198.18.{100 + i}.1/24 dev r{i}")
        lines.append(f"addr add 2001:db8:{i:x}::1/64 dev r{i} nodad")
        lines.append(f"route add 198.19.{i}.0/24 via 198.18.{100 + i}.2")
    sh("ip", "-n", ns, "-batch", "-", stdin="\n".join(lines) + "\n")
    count = len(sock.links()) + len(sock.addresses()) + len(sock.routes())

    def ip_json() -> None:
        for args in (("link",), ("addr",), ("route",), ("-6", "route")):
            subprocess.run(["ip", "-n", ns, "-j", *args], check=True, stdout=subprocess.PIPE)

    for _ in range(rounds):
        res.add("ip -j x4", timed(ip_json))
        res.add("codec read", timed(lambda: (sock.links(), sock.addresses(), sock.routes())))
        res.add("plugin query", await atimed(lambda: plugin.query(ctx)))
    res.samples["objects"] = [count]
    await ctx.aclose()
    sock.close()


async def bench_ovs(ns: str, rounds: int, res: Results) -> None:
    ovs = PrivateOvs(ns)
    db = await Ovsdb.connect(ovs.sock)
    try:
        def bridge_ops(name: str) -> list[dict[str, Any]]:
            return [
                {"op": "insert", "table": "Interface", "row": {"name": name, "type": "internal"}, "uuid-name": "i"},
                {"op": "insert", "table": "Port", "row": {"name": name, "interfaces": named("i")}, "uuid-name": "p"},
                {"op": "insert", "table": "Bridge", "row": {"name": name, "ports": named("p"), "datapath_type": "netdev"},
                 "uuid-name": "b"},
                {"op": "mutate", "table": "Open_vSwitch", "where": [],
                 "mutations": [["bridges", "insert", oset([named("b")])]]},
            ]

        async def del_bridges() -> None:
            await db.transact_and_wait([{"op": "update", "table": "Open_vSwitch", "where": [],
                                         "row": {"bridges": oset([])}}], 30)

        ports_ops: list[dict[str, Any]] = []
        port_refs = []
        for i in range(100):
            ports_ops.append({"op": "insert", "table": "Interface", "row": {"name": f"q{i}", "type": "internal"},
                              "uuid-name": f"i{i}"})
            ports_ops.append({"op": "insert", "table": "Port", "row": {"name": f"q{i}", "interfaces": named(f"i{i}")},
                              "uuid-name": f"p{i}"})
            port_refs.append(named(f"p{i}"))
        ports_ops.append({"op": "mutate", "table": "Bridge", "where": [["name", "==", "pb"]],
                          "mutations": [["ports", "insert", oset(port_refs)]]})
        vsctl_ports = []
        for i in range(100):
            vsctl_ports += ["--", "add-port", "pb", f"q{i}", "--", "set", "Interface", f"q{i}", "type=internal"]

        for _ in range(rounds):
            res.add("ovs-vsctl --no-wait add-br", timed(lambda: ovs.vsctl(
                "--no-wait", "add-br", "xb", "--", "set", "bridge", "xb", "datapath_type=netdev")))
            await del_bridges()
            res.add("transact add-br", await atimed(lambda: db.transact(bridge_ops("xb"))))
            await del_bridges()
            res.add("ovs-vsctl add-br (waits)", timed(lambda: ovs.vsctl(
                "add-br", "xb", "--", "set", "bridge", "xb", "datapath_type=netdev")))
            await del_bridges()
            res.add("transact add-br + wait", await atimed(lambda: db.transact_and_wait(bridge_ops("xb"), 30)))
            await del_bridges()

        for r in range(max(min(3, rounds), rounds // 3)):
            await db.transact_and_wait(bridge_ops("pb"), 30)
            res.add("ovs-vsctl --no-wait 100 add-port", timed(lambda: ovs.vsctl("--no-wait", *vsctl_ports[1:])))
            await del_bridges()
            await db.transact_and_wait(bridge_ops("pb"), 30)
            res.add("transact 100 ports", await atimed(lambda: db.transact(ports_ops)))
            await del_bridges()
            await db.transact_and_wait(bridge_ops("pb"), 30)
            res.add("ovs-vsctl 100 add-port (waits)", timed(lambda: ovs.vsctl(*vsctl_ports[1:])))
            await del_bridges()
            await db.transact_and_wait(bridge_ops("pb"), 30)
            res.add("transact 100 ports + wait", await atimed(lambda: db.transact_and_wait(ports_ops, 60)))
            await del_bridges()
            del r

        await bench_whole_apply(ns, ovs, rounds, res)
    finally:
        await db.close()
        ovs.close()


def whole_doc() -> dict[str, Any]:
    """About 100 changes: veths, two OVS bridges with ports, addresses and routes."""
    ifaces: list[dict[str, Any]] = []
    for b in range(2):
        ports = [f"w{b}{i}" for i in range(8)]
        ifaces.append({"name": f"obr{b}", "type": "ovs-bridge", "ports": ports,
                       "ipv4": {"address": [{"ip": f"198.18.{200 + b}.1", "prefix": 24}]}})
        for p in ports:
            ifaces.append({"name": p, "type": "veth", "veth": {"peer": f"{p}p"}})
    for i in range(10):
        ifaces.append({"name": f"d{i}", "type": "veth", "veth": {"peer": f"d{i}p"},
                       "ipv4": {"address": [{"ip": f"198.18.{210 + i}.{k + 1}", "prefix": 24} for k in range(3)]}})
    routes = [{"destination": f"198.20.{i}.0/24", "next-hop": f"198.18.{210 + i % 10}.254"} for i in range(20)]
    return {"interfaces": ifaces, "routes": routes}


async def bench_whole_apply(ns: str, ovs: PrivateOvs, rounds: int, res: Results) -> None:
    doc = whole_doc()
    absent = {"interfaces": [{"name": i["name"], "state": "absent"} for i in doc["interfaces"]]}
    n_changes = 0
    for _ in range(max(min(3, rounds), rounds // 3)):
        plugin = NetPlugin()
        ctx = Context(Settings(netns=ns, ovsdb=ovs.sock, job_timeout=60))
        db = await plugin._ovsdb(ctx, ovs.sock)
        waited = 0.0
        real_wait = db.wait_cur_cfg

        async def counting_wait(target: int, timeout: float, real_wait: Any = real_wait) -> None:
            nonlocal waited
            t = time.perf_counter()
            await real_wait(target, timeout)
            waited += time.perf_counter() - t

        db.wait_cur_cfg = counting_wait  # type: ignore[method-assign]
        t0 = time.perf_counter()
        desired = NetSection.model_validate(doc)
        problems = await plugin.check(desired, ctx)
        assert not problems
        changes = plugin.diff(desired, await plugin.query(ctx, desired))
        n_changes = len(changes)
        await plugin.apply(changes, ctx, UndoLog())
        left = plugin.diff(desired, await plugin.query(ctx, desired))
        total = time.perf_counter() - t0
        assert left == [], [c.summary() for c in left]
        res.add("whole apply, end to end", total)
        res.add("whole apply, vswitchd wait", waited)
        res.add("whole apply, without vswitchd wait", total - waited)
        # tear down (untimed)
        gone = NetSection.model_validate(absent)
        await plugin.apply(plugin.diff(gone, await plugin.query(ctx, gone)), ctx, UndoLog())
        await ctx.aclose()
    res.samples["changes"] = [n_changes]


# --- the scale sweep: whole process and in-process next to `ip -batch` ---

KINDS = ("addresses", "routes", "veth pairs")


def _ip4(base: int, i: int) -> str:
    return f"198.{base}.{i // 250 % 256}.{i % 250 + 1}" if i < 64000 else f"198.{base + 1}.{i // 250 % 256}.{i % 250 + 1}"


def sweep_state(kind: str, n: int) -> dict[str, Any]:
    """The net section of N objects of `kind` (addresses and routes on one veth)."""
    if kind == "veth pairs":
        return {"interfaces": [{"name": f"p{i}", "type": "veth", "veth": {"peer": f"p{i}q"}} for i in range(n)]}
    iface: dict[str, Any] = {"name": "v0", "type": "veth", "state": "up", "veth": {"peer": "v0p"}}
    if kind == "addresses":
        iface["ipv4"] = {"address": [{"ip": _ip4(18, i), "prefix": 32} for i in range(n)]}
        return {"interfaces": [iface]}
    iface["ipv4"] = {"address": [{"ip": "198.18.0.1", "prefix": 16}]}
    return {"interfaces": [iface],
            "routes": [{"destination": f"{_ip4(20, i)}/32", "next-hop-interface": "v0"} for i in range(n)]}


def sweep_batch(kind: str, n: int) -> str:
    """The same objects as an `ip -batch` script."""
    if kind == "veth pairs":
        return "".join(f"link add p{i} type veth peer name p{i}q\n" for i in range(n))
    lines = ["link add v0 type veth peer name v0p", "link set v0 up"]
    if kind == "addresses":
        lines += [f"addr add {_ip4(18, i)}/32 dev v0" for i in range(n)]
    else:
        lines.append("addr add 198.18.0.1/16 dev v0")
        lines += [f"route add {_ip4(20, i)}/32 dev v0" for i in range(n)]
    return "\n".join(lines) + "\n"


def op_dbus(ns: str, state_dir: Path, *args: str) -> None:
    """One whole `op-dbus` process, as a user runs it (exit 0 required)."""
    # As installed: bytecode cached (the first run writes it), whatever this shell's PYTHONDONTWRITEBYTECODE says.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(PYTHONPATH=str(SRC), PYTHONPYCACHEPREFIX=str(state_dir.parent / "pycache"))
    subprocess.run([sys.executable, "-m", "op_dbus", "--state-dir", str(state_dir), "--netns", ns, *args],
                   check=True, stdout=subprocess.DEVNULL, env=env)


async def in_process(ns: str, doc: dict[str, Any]) -> None:
    """check, query, diff, apply and verify, as the engine does, without the process and the audit log."""
    plugin = NetPlugin()
    async with Context(Settings(netns=ns, job_timeout=600)) as ctx:
        desired = NetSection.model_validate(doc)
        assert not await plugin.check(desired, ctx)
        await plugin.apply(plugin.diff(desired, await plugin.query(ctx, desired)), ctx, UndoLog())
        left = plugin.diff(desired, await plugin.query(ctx, desired))
        assert left == [], [c.summary() for c in left[:5]]


async def bench_sweep(sizes: list[int], kinds: list[str], rounds: int, res: Results) -> None:
    work = Path(tempfile.mkdtemp(prefix="opdb-sweep-"))
    try:
        empty = work / "empty.json"
        empty.write_text('{"version": 1, "plugins": {"net": {}}}')
        warm = new_netns()
        try:
            op_dbus(warm, work / "warm-up", "diff", str(empty))  # writes the bytecode cache, untimed
        finally:
            sh("ip", "netns", "del", warm)
        for kind in kinds:
            for n in sizes:
                state = work / f"state-{n}.json"
                state.write_text(json.dumps({"version": 1, "plugins": {"net": sweep_state(kind, n)}}))
                script = work / f"batch-{n}"
                script.write_text(sweep_batch(kind, n))
                for _ in range(rounds):
                    key = f"{kind}:{n}"
                    ns = new_netns()
                    try:
                        res.add(f"{key}:ip", timed(partial(sh, "ip", "-n", ns, "-batch", str(script))))
                    finally:
                        sh("ip", "netns", "del", ns)
                    ns = new_netns()
                    state_dir = work / f"sd-{uuid.uuid4().hex[:6]}"
                    try:
                        res.add(f"{key}:apply", timed(partial(op_dbus, ns, state_dir, "apply", str(state))))
                        res.add(f"{key}:diff", timed(partial(op_dbus, ns, state_dir, "diff", str(state))))
                        if kind == kinds[0] and n == sizes[0]:
                            res.add("fixed", timed(partial(op_dbus, ns, state_dir, "diff", str(empty))))
                    finally:
                        sh("ip", "netns", "del", ns)
                        shutil.rmtree(state_dir, ignore_errors=True)
                    ns = new_netns()
                    try:
                        res.add(f"{key}:inproc", await atimed(partial(in_process, ns, sweep_state(kind, n))))
                    finally:
                        sh("ip", "netns", "del", ns)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_sweep(sizes: list[int], kinds: list[str], rounds: int, res: Results) -> None:
    print(f"scale sweep: medians of {rounds} interleaved round(s), milliseconds; each variant into a fresh namespace")
    fixed = res.median_ms("fixed")
    print(f"  fixed cost of one op-dbus command (`op-dbus diff` of an empty net section): {fixed:.0f} ms")
    print(f"  {'kind':<11} {'N':>6}  {'op-dbus apply':>13} {'no-op diff':>10} {'in-process':>10} {'ip -batch':>9}"
          f"  {'apply/(ip+fixed)':>16}  {'in-proc/ip':>10}")
    for kind in kinds:
        for n in sizes:
            key = f"{kind}:{n}"
            apply_ms, diff_ms = res.median_ms(f"{key}:apply"), res.median_ms(f"{key}:diff")
            inproc, ip = res.median_ms(f"{key}:inproc"), res.median_ms(f"{key}:ip")
            print(f"  {kind:<11} {n:>6}  {apply_ms:>13.0f} {diff_ms:>10.0f} {inproc:>10.0f} {ip:>9.0f}"
                  f"  {apply_ms / (ip + fixed):>16.2f}  {inproc / ip:>10.2f}")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--sweep", metavar="N,N,...", default="10,100,1000,3000,10000",
                    help="object counts of the scale sweep ('' skips it)")
    ap.add_argument("--sweep-rounds", type=int, default=3, help="rounds of the sweep (each round applies every N)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"what the sweep applies: {', '.join(KINDS)}")
    ap.add_argument("--only-sweep", action="store_true", help="run the scale sweep alone")
    ap.add_argument("--smoke", action="store_true", help="one round, tiny sizes: proves the benchmark runs")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.sweep, args.sweep_rounds = 1, "10", 1
    sizes = [int(x) for x in args.sweep.split(",") if x]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        sys.exit(f"unknown kind(s): {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    res = Results()
    if sizes:
        await bench_sweep(sizes, kinds, args.sweep_rounds, res)
    if args.only_sweep:
        print_sweep(sizes, kinds, args.sweep_rounds, res)
        return
    ns = new_netns()
    ns_ovs = new_netns()
    try:
        await bench_netlink(ns, args.rounds, res)
        if shutil.which("ovs-vswitchd"):
            await bench_ovs(ns_ovs, args.rounds, res)
    finally:
        sh("ip", "netns", "del", ns)
        sh("ip", "netns", "del", ns_ovs)

    print(f"net benchmark: medians over {args.rounds} interleaved rounds (fewer for the 100-port/whole-apply cases)")
    print("netlink")
    res.line("one address add: codec vs `ip addr add`", "codec add 1", "ip addr add", ">= 10x")
    res.line("one address add: plugin apply vs `ip addr add`", "plugin apply 1", "ip addr add", ">= 10x")
    res.line("100 address adds: codec batch vs `ip -batch`", "codec batch 100", "ip -batch 100", ">= 1x")
    res.line("100 address adds: plugin apply vs `ip -batch`", "plugin apply 100", "ip -batch 100", ">= 1x")
    objs = int(res.samples["objects"][0])
    res.line(f"read {objs} objects: codec vs `ip -j` link/addr/route/-6 route", "codec read", "ip -j x4", ">= 1x")
    res.line(f"read {objs} objects: plugin query vs `ip -j` x4", "plugin query", "ip -j x4", ">= 1x")
    if "transact add-br" in res.samples:
        print("OVSDB")
        res.line("one bridge: transact vs `ovs-vsctl --no-wait add-br`", "transact add-br", "ovs-vsctl --no-wait add-br",
                 ">= 10x")
        res.line("one bridge, waiting for vswitchd: vs `ovs-vsctl add-br`", "transact add-br + wait",
                 "ovs-vsctl add-br (waits)", "> 1x")
        res.line("100 ports: transact vs one `ovs-vsctl --no-wait` x100", "transact 100 ports",
                 "ovs-vsctl --no-wait 100 add-port", ">= 5x")
        res.line("100 ports, waiting for vswitchd: vs `ovs-vsctl` x100", "transact 100 ports + wait",
                 "ovs-vsctl 100 add-port (waits)", "> 1x")
        print(f"whole apply of {int(res.samples['changes'][0])} changes (check, query, diff, apply, verify)")
        for name in ("whole apply, end to end", "whole apply, vswitchd wait", "whole apply, without vswitchd wait"):
            print(f"  {name:<58} {res.median_ms(name):9.3f} ms" + ("   (bar: < 300 ms)" if "without" in name else ""))
    if sizes:
        print_sweep(sizes, kinds, args.sweep_rounds, res)


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark creates network namespaces")
    asyncio.run(main())
