"""GitOps speed: commit pushed -> applied and recorded, the cost of polling an unchanged remote, `op-dbus check`.

    python benchmarks/gitops.py [--smoke] [--rounds N]

1. Latency: the agent (in this process, enforce mode, a real audit log; an in-memory plugin stands in for the
   system so the number is git + validation + engine + log) follows a bare repository served by `git daemon` on
   loopback with --git-interval 1; the benchmark pushes a signed commit at a random point of the interval and
   times it until the apply block naming the commit is written. Also with a push notification (SIGHUP right
   after the push, as a post-receive hook or webhook calling `systemctl reload op-dbus` would).
2. Poll cost of an unchanged remote, through a byte-counting TCP proxy: the agent's fetch against `git fetch`
   in an ordinary clone (what a cron job running `git pull` does), interleaved.
3. `op-dbus check` of a fleet repository of 1,000 host files (the real command), against parsing the same files
   with Python's json module alone (the floor: syntax only, no schema).
Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from op_dbus.agent import Agent, AgentConfig  # noqa: E402
from op_dbus.agent.logs import setup  # noqa: E402
from op_dbus.agent.notify import Notifier  # noqa: E402
from op_dbus.gitops.source import GitSettings, GitSource  # noqa: E402
from op_dbus.ledger import Ledger  # noqa: E402
from op_dbus.plugin import Plugin, Settings  # noqa: E402
from tests.gitops.fleet import Daemon, Fleet, git, git_env, state  # noqa: E402
from tests.unit.agent.test_loop import Store  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class CountingProxy:
    """127.0.0.1:port -> target, counting the bytes of each connection both ways."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.bytes = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                with self.lock:
                    self.bytes += len(data)
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def take(self) -> int:
        time.sleep(0.02)
        with self.lock:
            n, self.bytes = self.bytes, 0
        return n


async def latency(fleet: Fleet, url: str, rounds: int, notify: bool, tmp: Path) -> list[float]:
    store = Store({"x": 0, "y": 0})

    def load(names: list[str] | None) -> dict[str, Plugin[Any]]:
        return {"mem": store}

    state_dir = tmp / f"agent-{notify}"
    src = GitSource(GitSettings(url, allowed_signers=fleet.allowed, interval=1.0, hostname="web-1"), state_dir,
                    load=load)
    agent = Agent(AgentConfig(Path("git"), mode="enforce", debounce=0.01, interval=3600, source=src),
                  Settings(state_dir=state_dir), ledger=lambda: Ledger.open(state_dir), load=load,
                  logger=setup(io.StringIO(), logging.WARNING), notifier=Notifier({}))
    task = asyncio.create_task(agent.run())
    out = []
    try:
        while not agent.ready:
            await asyncio.sleep(0.01)
        for i in range(rounds + 1):
            await asyncio.sleep(random.uniform(0, 1.0))
            fleet.write("hosts/web-1.json", state({"x": 1000 * int(notify) + i + 1, "y": 0}))
            commit = await asyncio.to_thread(fleet.commit, f"round {i}", fleet.ops)
            pushed = time.monotonic()  # `git push` has returned: the remote has the commit
            if notify:
                os.kill(os.getpid(), signal.SIGHUP)
            while src.kept_meta.get("git", {}).get("commit") != commit or store.values["x"] != 1000 * int(notify) + i + 1:
                await asyncio.sleep(0.002)
            with Ledger.open(state_dir) as log:
                while True:
                    last = log.get(len(log) - 1).header
                    if last.kind == "apply" and (last.meta or {}).get("git", {}).get("commit") == commit:
                        break
                    await asyncio.sleep(0.002)
            if i:  # the first round also clones: not a steady state
                out.append(time.monotonic() - pushed)
    finally:
        agent.inbox.put_nowait(("stop", "benchmark"))
        await task
    return out


def fetch_cost(fleet: Fleet, daemon: Daemon, rounds: int, tmp: Path) -> dict[str, dict[str, float]]:
    proxy = CountingProxy(daemon.port)
    url = f"git://127.0.0.1:{proxy.port}/fleet.git"
    src = GitSource(GitSettings(url, allowed_signers=fleet.allowed, hostname="web-1"), tmp / "poll")
    src.open()
    src.keep(src.poll())
    clone = tmp / "clone"
    git(tmp, "clone", "-q", url, str(clone))
    proxy.take()
    def poll(name: str) -> None:
        if name == "op-dbus poll":
            assert src.poll().kind == "unchanged"
        else:
            subprocess.run(["git", "fetch", "-q", "origin"], cwd=clone, env=git_env(), check=True)

    results: dict[str, dict[str, list[float]]] = {"op-dbus poll": {"ms": [], "bytes": []},
                                                  "git fetch (ordinary clone)": {"ms": [], "bytes": []}}
    for _ in range(rounds):
        for name in results:
            started = time.monotonic()
            poll(name)
            results[name]["ms"].append((time.monotonic() - started) * 1000)
            results[name]["bytes"].append(proxy.take())
    out = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in results.items()}
    # The server's CPU: a batch of polls against a git daemon of its own, which is then stopped and reaped, so its
    # CPU and that of every upload-pack it ran show up in this process's children's usage (the polls' own git
    # processes, reaped during the batch, are subtracted).
    for name in results:
        server = Daemon(fleet.root)
        url = server.url("fleet.git")
        fresh = GitSource(GitSettings(url, allowed_signers=fleet.allowed, hostname="web-1"), tmp / f"cpu-{len(out)}")
        fresh.open()
        fresh.keep(fresh.poll())
        git(clone, "fetch", "-q", url)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(rounds):
            if name == "op-dbus poll":
                assert fresh.poll().kind == "unchanged"
            else:
                git(clone, "fetch", "-q", url)
        client = resource.getrusage(resource.RUSAGE_CHILDREN)
        server.stop()
        done = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = (done.ru_utime + done.ru_stime) - (client.ru_utime + client.ru_stime)
        out[name]["server_cpu_ms"] = spent * 1000 / rounds
        out[name]["client_cpu_ms"] = ((client.ru_utime + client.ru_stime) - (usage.ru_utime + usage.ru_stime)) \
            * 1000 / rounds
    return out


def check_speed(hosts: int, rounds: int, tmp: Path) -> dict[str, float]:
    root = tmp / "checkrepo"
    (root / "hosts").mkdir(parents=True)
    (root / "base.json").write_text(json.dumps({"version": 1, "plugins": {"systemd": {"units": {
        "ssh.service": {"active_state": "active"}}}}}))
    for i in range(hosts):
        (root / f"hosts/host-{i}.json").write_text(json.dumps({"plugins": {"systemd": {"units": {
            f"app-{i}.service": {"active_state": "active", "enabled": True}}}}}))
    floor = "import json,pathlib,sys\nfor p in pathlib.Path(sys.argv[1]).glob('hosts/*.json'): json.loads(p.read_bytes())"
    times: dict[str, list[float]] = {"op-dbus check": [], "json.loads only (floor)": []}
    for _ in range(rounds):
        for name in times:
            argv = ([sys.executable, "-m", "op_dbus", "check", "--git-path", "base.json,hosts/{hostname}.json",
                     str(root)] if name == "op-dbus check" else [sys.executable, "-c", floor, str(root)])
            started = time.monotonic()
            r = subprocess.run(argv, capture_output=True, text=True, check=False,
                               env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
            times[name].append(time.monotonic() - started)
            if r.returncode != 0:
                raise SystemExit(f"{name} failed: {r.stdout}{r.stderr}")
    return {n: statistics.median(v) for n, v in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one round, tiny sizes (seconds)")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rounds, hosts, check_rounds = (1, 20, 1) if args.smoke else (args.rounds, 1000, 5)
    with tempfile.TemporaryDirectory(prefix="op-dbus-bench-") as d:
        tmp = Path(d)
        fleet = Fleet(tmp / "fleet")
        fleet.write("hosts/web-1.json", state({"x": 0, "y": 0}))
        fleet.commit("start", fleet.ops)
        daemon = Daemon(fleet.root)
        try:
            url = daemon.url("fleet.git")
            lat = {"--git-interval 1": asyncio.run(latency(fleet, url, rounds, False, tmp)),
                   "--git-interval 1 + SIGHUP on push": asyncio.run(latency(fleet, url, rounds, True, tmp))}
            cost = fetch_cost(fleet, daemon, max(rounds, 3) * 5, tmp)
        finally:
            daemon.stop()
        check = check_speed(hosts, check_rounds, tmp)
    print(f"commit pushed -> applied and recorded ({rounds} rounds, git daemon on loopback, signed commits)")
    for name, values in lat.items():
        print(f"  {name:36s} median {statistics.median(values) * 1000:7.0f} ms   p90 {pct(values, 90) * 1000:7.0f} ms")
    print("poll of an unchanged remote (median)")
    base = cost["git fetch (ordinary clone)"]
    for name, c in cost.items():
        print(f"  {name:36s} {c['ms']:7.1f} ms  {c['bytes']:7.0f} bytes   ({c['ms'] / base['ms']:.2f}x time, "
              f"{c['bytes'] / max(base['bytes'], 1):.2f}x bytes of git fetch)")
    polls = 10_000 / 10
    for name, c in cost.items():
        print(f"  {name:36s} CPU per poll: server (git daemon + upload-pack) {c['server_cpu_ms']:.1f} ms, "
              f"client (git) {c['client_cpu_ms']:.1f} ms (mean of {max(rounds, 3) * 5})")
    print(f"  10,000 hosts every 10 s: {polls:.0f} polls/s, {polls * cost['op-dbus poll']['bytes'] / 1e6:.2f} MB/s "
          f"and {polls * cost['op-dbus poll']['server_cpu_ms'] / 1000:.1f} cores at the server")
    print(f"op-dbus check of a repository of {hosts} host files (median of {check_rounds}, bar < 2 s)")
    for name, t in check.items():
        print(f"  {name:36s} {t:7.2f} s")
    print(f"  ratio: {check['op-dbus check'] / check['json.loads only (floor)']:.1f}x the floor")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
