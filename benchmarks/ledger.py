"""The audit log: durable signed append vs a plain SQLite insert, full verification, proofs at a million leaves.

    python benchmarks/ledger.py [--blocks 100000] [--appends 2000] [--leaves 1000000] [--dir /var/tmp] [--smoke]

One run, variants interleaved; prints medians and ratios. Uses a temp dir on the same filesystem as
`--dir` (default: the system temp dir), so fsync costs are that disk's.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from op_dbus.ledger import Ledger, canonical, canonical_state, merkle  # noqa: E402


def state_for(i: int, units: int = 20) -> dict:
    """A realistic snapshot: 20 systemd units and a few interfaces; one unit changes per block."""
    return {
        "version": 1,
        "plugins": {
            "systemd": {
                "units": {
                    f"svc{u}.service": {
                        "enabled": (u + i) % 7 != 0,
                        "active_state": "active",
                        "Nice": u,
                        "Restart": "always",
                    }
                    for u in range(units)
                }
            },
            "net": {
                "interfaces": [{"name": f"br{n}", "type": "ovs-bridge", "addresses": [f"10.{n}.0.1/24"]} for n in range(4)]
            },
            "login1": {"idle_action": "ignore", "generation": i},
        },
    }


def changes_for(i: int) -> list[dict]:
    return [
        {
            "plugin": "systemd",
            "object": f"svc{i % 20}.service",
            "action": "modify",
            "before": {"enabled": True},
            "after": {"enabled": False},
        }
    ]


ACTOR = {"user": "root", "uid": 0, "command": "op-dbus apply /etc/op-dbus/state.json"}


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


def bench_append(base: Path, n: int) -> None:
    log = Ledger.open(base / "append")
    plain = sqlite3.connect(base / "plain.db", isolation_level=None)
    plain.execute("PRAGMA journal_mode = WAL")
    plain.execute("PRAGMA synchronous = FULL")
    plain.execute("CREATE TABLE blocks (idx INTEGER PRIMARY KEY, leaf BLOB, changes BLOB, state BLOB)")
    t_log, t_plain = [], []
    last_leaf = log.append("genesis", [], state_for(-1), actor=ACTOR, summary="warm-up").leaf
    for i in range(n):
        state, changes = state_for(i), changes_for(i)
        # The plain insert stores the bytes the log stores: the previous header (same shape and size)
        # and this block's canonical records, computed outside its timing.
        changes_b, (state_b, _) = canonical(changes), canonical_state(state)
        leaf_b = last_leaf

        def run_log(i: int = i, changes: list = changes, state: dict = state) -> None:
            nonlocal last_leaf
            last_leaf = log.append("apply", changes, state, actor=ACTOR, summary=f"systemd: change {i}").leaf

        def run_plain(row: tuple = (i, leaf_b, changes_b, state_b)) -> None:
            plain.execute("BEGIN IMMEDIATE")
            plain.execute("INSERT INTO blocks VALUES (?, ?, ?, ?)", row)
            plain.execute("COMMIT")

        order = (run_log, run_plain) if i % 2 else (run_plain, run_log)
        for fn in order:
            t = time.perf_counter()
            fn()
            (t_log if fn is run_log else t_plain).append(time.perf_counter() - t)
    # Where the time goes, without the disk: the same work with synchronous=OFF.
    log._conn.execute("PRAGMA synchronous = OFF")
    t_nosync = []
    for i in range(n, n + min(n, 500)):
        state, changes = state_for(i), changes_for(i)
        t = time.perf_counter()
        log.append("apply", changes, state, actor=ACTOR, summary=f"systemd: change {i}")
        t_nosync.append(time.perf_counter() - t)
    t_canon = []
    for i in range(min(n, 500)):
        t = time.perf_counter()
        canonical_state(state_for(i))
        canonical(changes_for(i))
        t_canon.append(time.perf_counter() - t)
    log.close()
    plain.close()
    a, p = statistics.median(t_log), statistics.median(t_plain)
    leaf_len = len(last_leaf)
    print(f"durable signed append ({n} blocks, {len(state_b)} B state, {leaf_len} B header), medians:")
    print(
        f"  op-dbus append (WAL, synchronous=FULL, Ed25519 checkpoint) {ms(a):>12}"
        f"   bar <= 1 ms: {'ok' if a <= 1e-3 else 'MISSED'}"
    )
    print(f"  plain SQLite insert of the same bytes, same durability    {ms(p):>12}")
    print(f"  overhead ratio (append / plain insert)                     {a / p:>9.2f}x   (+{ms(a - p)})")
    print(f"  append with synchronous=OFF (CPU part)                     {ms(statistics.median(t_nosync)):>12}")
    print(f"  of which canonical JSON of state + changes                 {ms(statistics.median(t_canon)):>12}")
    print(
        f"  p90 append {ms(sorted(t_log)[int(len(t_log) * 0.9)])}, p90 plain {ms(sorted(t_plain)[int(len(t_plain) * 0.9)])}"
    )


def bench_verify(base: Path, blocks: int, rounds: int) -> Path:
    state_dir = base / "verify"
    t = time.perf_counter()
    with Ledger.open(state_dir) as log:
        for i in range(blocks):
            log.append("apply" if i else "genesis", changes_for(i), state_for(i), actor=ACTOR, summary=f"change {i}")
    build = time.perf_counter() - t
    db_mb = sum(f.stat().st_size for f in state_dir.glob("ledger.db*")) / 1e6
    times, cpu_main, cpu_child = [], [], []
    with Ledger.open(state_dir) as log:
        for _ in range(rounds):
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            c = time.process_time()
            t = time.perf_counter()
            report = log.verify_full(update=False)
            times.append(time.perf_counter() - t)
            cpu_main.append(time.process_time() - c)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_child.append(after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime)
            assert report.ok, report.problems
        t = time.perf_counter()
        report = log.verify_full(update=False, all_signatures=True)
        t_all = time.perf_counter() - t
        assert report.ok
        t_inc, t_con = [], []
        rng = random.Random(1)
        for _ in range(200):
            index = rng.randrange(blocks)
            t = time.perf_counter()
            log.inclusion_proof(index)
            t_inc.append(time.perf_counter() - t)
            old = rng.randrange(1, blocks)
            t = time.perf_counter()
            log.consistency_proof(old)
            t_con.append(time.perf_counter() - t)
    v = statistics.median(times)
    print(f"\nfull verification of {blocks} blocks ({db_mb:.0f} MB database):")
    print(f"  build (durable appends, one by one)                        {build:>9.1f} s  ({ms(build / blocks)} per block)")
    print(
        f"  verify_full, median of {rounds}                                 {v:>9.2f} s"
        f"   bar < 3 s: {'ok' if v < 3 else 'MISSED'}"
    )
    print(
        f"  CPU per verify_full, median: this process {statistics.median(cpu_main):.2f} s"
        f" (two threads), child process {statistics.median(cpu_child):.2f} s"
    )
    print(f"  verify_full(all_signatures=True), once                     {t_all:>9.2f} s")
    print(f"  inclusion proof from SQLite, median                         {ms(statistics.median(t_inc)):>12}")
    print(f"  consistency proof from SQLite, median                       {ms(statistics.median(t_con)):>12}")
    return state_dir


def bench_proofs(base: Path, leaves: int) -> None:
    t = time.perf_counter()
    tree = merkle.MemoryTree()
    for i in range(leaves):
        tree.append(merkle.leaf_hash(i.to_bytes(8, "big")))
    build_mem = time.perf_counter() - t
    # The same nodes in an SQLite table shaped like the log's, read the way the log reads them.
    t = time.perf_counter()
    conn = sqlite3.connect(base / "proofs.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE tree (level INTEGER, idx INTEGER, hash BLOB, PRIMARY KEY (level, idx)) WITHOUT ROWID")
    conn.execute("BEGIN")
    for level, nodes in enumerate(tree.levels):
        conn.executemany("INSERT INTO tree VALUES (?, ?, ?)", ((level, i, h) for i, h in enumerate(nodes)))
    conn.execute("COMMIT")
    build_db = time.perf_counter() - t

    def node(level: int, idx: int) -> bytes:
        return conn.execute("SELECT hash FROM tree WHERE level = ? AND idx = ?", (level, idx)).fetchone()[0]

    rng = random.Random(2)
    root = tree.root()
    rows = {"inclusion": ([], [], [], []), "consistency": ([], [], [], [])}
    for _ in range(500):
        index = rng.randrange(leaves)
        gen_mem, gen_db, ver, sizes = rows["inclusion"]
        t = time.perf_counter()
        proof = tree.inclusion_proof(index)
        gen_mem.append(time.perf_counter() - t)
        t = time.perf_counter()
        proof_db = merkle.inclusion_proof(index, leaves, node)
        gen_db.append(time.perf_counter() - t)
        assert proof_db == proof
        t = time.perf_counter()
        merkle.verify_inclusion(index, leaves, tree.node(0, index), proof, root)
        ver.append(time.perf_counter() - t)
        sizes.append(len(proof))

        old = rng.randrange(1, leaves)
        gen_mem, gen_db, ver, sizes = rows["consistency"]
        t = time.perf_counter()
        proof = tree.consistency_proof(old)
        gen_mem.append(time.perf_counter() - t)
        t = time.perf_counter()
        proof_db = merkle.consistency_proof(old, leaves, node)
        gen_db.append(time.perf_counter() - t)
        assert proof_db == proof
        old_root = tree.root(old)
        t = time.perf_counter()
        merkle.verify_consistency(old, leaves, proof, old_root, root)
        ver.append(time.perf_counter() - t)
        sizes.append(len(proof))
    conn.close()
    print(f"\nproofs at {leaves} leaves (tree built in memory in {build_mem:.1f} s, copied to SQLite in {build_db:.1f} s):")
    print(f"  {'':<12}{'hashes (median/max)':>20}{'bytes':>8}{'make (memory)':>15}{'make (SQLite)':>15}{'verify':>12}")
    for name, (gen_mem, gen_db, ver, sizes) in rows.items():
        med = statistics.median(sizes)
        print(
            f"  {name:<12}{f'{med:.0f} / {max(sizes)}':>20}{med * 32:>8.0f}{ms(statistics.median(gen_mem)):>15}"
            f"{ms(statistics.median(gen_db)):>15}{ms(statistics.median(ver)):>12}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=100_000)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--smoke", action="store_true", help="one round, tiny sizes (a test runs this)")
    args = parser.parse_args()
    if args.smoke:
        args.blocks, args.appends, args.leaves, args.rounds = 200, 20, 1000, 1
    with tempfile.TemporaryDirectory(prefix="op-dbus-ledger-bench-", dir=args.dir) as tmp:
        base = Path(tmp)
        os.chmod(base, 0o700)
        print(f"audit log benchmark in {base} (python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version})")
        print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.2f}\n")
        bench_append(base, args.appends)
        bench_verify(base, args.blocks, args.rounds)
        bench_proofs(base, args.leaves)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f} (other work on the machine inflates wall times)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
