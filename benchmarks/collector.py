"""The collector under load: add-checkpoint throughput and latency over real HTTP, fleet status, storage per host.

    python benchmarks/collector.py [--hosts 1000] [--seconds 10] [--rate 500] [--workers 2] [--smoke]

Simulated hosts each have a real Ed25519 key and a real RFC 6962 log (in memory); every request is a signed
checkpoint with its consistency proof, prepared before the clock starts. The collector is `op-dbus collector
serve` (uvicorn, --workers N) over a throwaway PostgreSQL 15 cluster, then over SQLite, on loopback; the load
comes from keep-alive connections of one asyncio client in this process. Printed, for each database:
  sustained add-checkpoint/s (closed loop, as fast as answered), p50/p99 latency at a fixed --rate (open loop),
  `fleet status` (GET /v1/status with an API token) over --status-hosts enrolled hosts, and bytes stored
  per host per day at one report a minute;
and the physical floor: Ed25519 verifies per second on one core here.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from benchmarks import pgcluster  # noqa: E402
from op_dbus.fleet import db  # noqa: E402
from op_dbus.fleet.client import api_get, request_body  # noqa: E402
from op_dbus.fleet.fleetview import FleetView  # noqa: E402
from op_dbus.ledger import merkle, note  # noqa: E402


class SimHost:
    """A host's log in memory: a real key, a real Merkle tree; `next_body` grows it by a block and signs."""

    def __init__(self, n: int) -> None:
        self.signer = note.Signer(f"bench.example/host{n}", Ed25519PrivateKey.generate())
        self.tree = merkle.MemoryTree()
        self.cosigned = 0
        self.bodies: list[bytes] = []

    def prepare(self, count: int) -> None:
        for _ in range(count):
            old = self.tree.size
            self.tree.append(merkle.leaf_hash(f"{self.signer.name} block {old}".encode()))
            size = self.tree.size
            proof = self.tree.consistency_proof(old, size) if old else []
            cp = note.sign(note.checkpoint_text(self.signer.name, size, self.tree.root()), [self.signer])
            self.bodies.append(request_body(old, proof, cp))


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> int:
    writer.write(b"POST /add-checkpoint HTTP/1.1\r\nHost: bench\r\nContent-Type: text/plain\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    status_line = await reader.readline()
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def closed_loop(port: int, hosts: list[SimHost], connections: int, seconds: float) -> tuple[int, int]:
    """As fast as answered: each connection walks its share of hosts. Returns (200s, others)."""
    ok = bad = 0
    stop = time.monotonic() + seconds

    async def worker(share: list[SimHost]) -> None:
        nonlocal ok, bad
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.monotonic() < stop:
            progressed = False
            for h in share:
                if h.cosigned < len(h.bodies) and time.monotonic() < stop:
                    status = await post(reader, writer, h.bodies[h.cosigned])
                    h.cosigned += 1
                    progressed = True
                    ok, bad = (ok + 1, bad) if status == 200 else (ok, bad + 1)
            if not progressed:
                break
        writer.close()

    await asyncio.gather(*(worker(hosts[i::connections]) for i in range(connections)))
    return ok, bad


async def open_loop(port: int, hosts: list[SimHost], connections: int, rate: float, seconds: float) -> list[float]:
    """A fixed rate: request k is due at k/rate; latency is counted from when it was due (queueing included)."""
    latencies: list[float] = []
    total = int(rate * seconds)
    start = time.monotonic() + 0.2
    per_conn = connections

    async def worker(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        share = hosts[c::per_conn]
        k = c
        i = 0
        while k < total:
            due = start + k / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            h = share[i % len(share)]
            i += 1
            if h.cosigned >= len(h.bodies):
                break
            await post(reader, writer, h.bodies[h.cosigned])
            h.cosigned += 1
            latencies.append(time.monotonic() - due)
            k += per_conn
        writer.close()

    await asyncio.gather(*(worker(c) for c in range(connections)))
    return latencies


def start_server(stack: ExitStack, db_url: str, key_dir: Path, workers: int) -> int:
    port = pgcluster.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "op_dbus", "collector", "serve", "--db", db_url, "--key-file",
                             str(key_dir / "witness.key"), "--listen", f"127.0.0.1:{port}", "--workers", str(workers),
                             "--name", "bench.example/witness"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(stop)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the collector did not start") from None
            time.sleep(0.1)


def enroll_all(db_url: str, hosts: list[SimHost], extra: int) -> None:
    """Enroll the simulated hosts, plus `extra` more (for the status query), in bulk."""
    engine = db.make_engine(db_url)
    db.migrate(engine)
    now = time.time()
    rows = [(f"host{n}", h.signer.name, h.signer.verifier.vkey) for n, h in enumerate(hosts)]
    for n in range(extra):
        v = note.Signer(f"bench.example/idle{n}", Ed25519PrivateKey.generate()).verifier
        rows.append((f"idle{n}", v.name, v.vkey))
    with engine.begin() as conn:
        conn.execute(db.hosts.insert(), [{"name": a, "origin": b, "vkey": c, "enrolled": now} for a, b, c in rows])
        conn.execute(db.witness_state.insert(), [{"origin": b, "size": 0, "updated": now - (n % 7200)}
                                                  for n, (_a, b, _c) in enumerate(rows)])
    engine.dispose()


def db_bytes(db_url: str, engine_name: str) -> int:
    engine = db.make_engine(db_url)
    try:
        if engine_name == "postgresql":
            from sqlalchemy import text

            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM FULL witness_state"))
                return int(conn.execute(text("SELECT pg_total_relation_size('witness_state')")).scalar() or 0)
        path = db_url.split("sqlite:///", 1)[1]
        return os.path.getsize(path)
    finally:
        engine.dispose()


def ed25519_floor(count: int) -> float:
    key = Ed25519PrivateKey.generate()
    msg = b"example.com/log\n1234\n" + b"A" * 44 + b"\n"
    sig = key.sign(msg)
    pub = key.public_key()
    t0 = time.perf_counter()
    for _ in range(count):
        pub.verify(sig, msg)
    return count / (time.perf_counter() - t0)


def run_one(name: str, db_url: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    hosts = [SimHost(n) for n in range(args.hosts)]
    per_host = max(2, int(args.seconds * 3000 / args.hosts) + 2)
    for h in hosts:
        h.prepare(per_host + int(args.rate * args.seconds / args.hosts) + 2)
    enroll_all(db_url, hosts, max(0, args.status_hosts - args.hosts))
    key_dir = tmp / f"key-{name}"
    key_dir.mkdir(mode=0o700)
    out: dict[str, float] = {}
    with ExitStack() as stack:
        port = start_server(stack, db_url, key_dir, args.workers)
        ok, bad = asyncio.run(closed_loop(port, hosts, args.connections, args.seconds))
        out["sustained_per_s"] = ok / args.seconds
        out["refused"] = bad
        lat = asyncio.run(open_loop(port, hosts, args.connections, args.rate, args.seconds))
        lat.sort()
        out["p50_ms"] = 1000 * statistics.median(lat) if lat else float("nan")
        out["p99_ms"] = 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else float("nan")
        # `op-dbus fleet status` as an operator runs it: the CLI's HTTP call with an API token, end to end.
        engine = db.make_engine(db_url)
        token = FleetView(engine).create_api_token("viewer", "benchmark")
        engine.dispose()
        times = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            summary = api_get(f"http://127.0.0.1:{port}", "/v1/status", token)
            times.append(time.perf_counter() - t0)
    out["status_ms"] = 1000 * statistics.median(times)
    out["status_hosts"] = float(summary["hosts"])
    out["bytes_per_host"] = db_bytes(db_url, name) / max(1.0, float(summary["hosts"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--status-hosts", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="one short round, tiny sizes (a test runs this)")
    args = parser.parse_args()
    if args.smoke:
        args.hosts, args.status_hosts, args.seconds, args.rate, args.connections, args.rounds = 8, 50, 1, 20, 4, 1
    floor = ed25519_floor(200 if args.smoke else 20000)
    print(f"Ed25519 verify floor: {floor:,.0f} verifies/s on one core "
          f"(each add-checkpoint verifies one signature: {floor * 2:,.0f}/s is the 2-core ceiling, before HTTP and SQL)")
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="op-dbus-bench-") as tmp_s:
        tmp = Path(tmp_s)
        try:
            with pgcluster.cluster() as (url, _pid):
                results["postgresql"] = run_one("postgresql", url, args, tmp)
        except pgcluster.Unavailable as exc:
            print(f"postgresql: skipped ({exc})")
        if not args.no_sqlite:
            d = tmp / "sqlite"
            d.mkdir(mode=0o700)
            results["sqlite"] = run_one("sqlite", f"sqlite:///{d}/fleet.db", args, tmp)
    for name, r in results.items():
        day = r["bytes_per_host"]
        print(f"{name:10s} add-checkpoint sustained {r['sustained_per_s']:8,.0f}/s ({args.workers} workers, "
              f"{r['refused']:.0f} refused) | at {args.rate:g}/s: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms | "
              f"fleet status over {r['status_hosts']:.0f} hosts {r['status_ms']:.1f} ms | "
              f"{day:,.0f} bytes stored/host (constant: the witness keeps one row per log, updated in place; "
              f"per day at 1 report/min it is the same {day:,.0f} B)")
        print(f"{'':10s} sustained / Ed25519 2-core floor = {r['sustained_per_s'] / (floor * 2):.2f}")
    if "postgresql" in results and "sqlite" in results:
        p, s = results["postgresql"], results["sqlite"]
        print(f"ratio sqlite/postgresql: sustained {s['sustained_per_s'] / max(p['sustained_per_s'], 1e-9):.2f}, "
              f"p99 {s['p99_ms'] / max(p['p99_ms'], 1e-9):.2f}, status {s['status_ms'] / max(p['status_ms'], 1e-9):.2f}")


if __name__ == "__main__":
    main()
