"""Auditing the log: export of N blocks (time, size), the auditor's verification of it, search latency, compaction.

    python benchmarks/audit.py [--blocks 10000] [--rounds 5] [--semantic] [--dir /var/tmp] [--smoke]

One run; variants interleaved round by round; prints medians and ratios. The log is built with
`synchronous=OFF` (building it is not what is measured). `--semantic` adds embedding search (needs the
op-dbus[ml] extra).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ledger import ACTOR, state_for  # noqa: E402

from op_dbus import audit_verify  # noqa: E402
from op_dbus.ledger import Ledger  # noqa: E402
from op_dbus.ledger.archive import compact  # noqa: E402
from op_dbus.ledger.export import write_export  # noqa: E402
from op_dbus.ledger.search import SearchIndex  # noqa: E402

UNITS = ["postgresql", "nginx", "redis", "app-backend", "app-worker", "sshd", "cron", "chrony"]
ACTIONS = ["start", "stop", "enable", "disable", "modify"]
QUERIES = [
    "when did the database config change",
    "who stopped nginx",
    "redis enabled",
    "app-worker restart",
    "MemoryMax",
    "rollback",
    "time sync",
    "bridge mtu",
]


def changes_for(i: int) -> list[dict]:
    unit = UNITS[i % len(UNITS)]
    action = ACTIONS[(i // len(UNITS)) % len(ACTIONS)]
    after = {"MemoryMax": (i % 16 + 1) << 28} if action == "modify" else {"active_state": action}
    return [{"plugin": "systemd", "object": f"{unit}.service", "action": action, "before": {}, "after": after}]


def build(path: Path, n: int) -> Ledger:
    log = Ledger.open(path)
    log._conn.execute("PRAGMA synchronous = OFF")  # building the log is not what is measured
    for i in range(n):
        kind = "genesis" if i == 0 else ("rollback" if i % 97 == 0 else "apply")
        log.append(kind, changes_for(i), state_for(i), actor=ACTOR, summary=f"systemd: {changes_for(i)[0]['action']} "
                   f"{changes_for(i)[0]['object']}")
    return log


def median_ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1e3:9.1f} ms"


def timed(fn: object) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()  # type: ignore[operator]
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--semantic", action="store_true")
    ap.add_argument("--dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="one round, tiny sizes (a test runs this)")
    args = ap.parse_args()
    if args.smoke:
        args.blocks, args.rounds = 100, 1
    base = Path(tempfile.mkdtemp(prefix="op-dbus-audit-bench-", dir=args.dir))
    print(f"building a log of {args.blocks} blocks in {base} ...", flush=True)
    t0 = time.perf_counter()
    log = build(base / "state", args.blocks)
    print(f"  built in {time.perf_counter() - t0:.1f} s; ledger.db {os.path.getsize(log.db_path) / 2**20:.1f} MiB")

    full_t, bare_t, verify_t, verify_bare_t, parse_t = [], [], [], [], []
    sizes = {}
    for _ in range(args.rounds):
        for variant, payloads in (("with records", True), ("headers+proofs", False)):
            buf = io.StringIO()
            dt, _ = timed(lambda payloads=payloads, buf=buf: write_export(log, buf, payloads=payloads))
            (full_t if payloads else bare_t).append(dt)
            text = buf.getvalue()
            sizes[variant] = len(text.encode())
            dp, doc = timed(lambda text=text: json.loads(text))
            if payloads:
                parse_t.append(dp)
            dv, report = timed(lambda doc=doc: audit_verify.verify_export(doc, log.verifier_key))
            assert report.ok, report.problems  # type: ignore[attr-defined]
            (verify_t if payloads else verify_bare_t).append(dv + dp)
    print(f"\nexport of {args.blocks} blocks (median of {args.rounds}):")
    print(f"  with records     {median_ms(full_t)}   {sizes['with records'] / 2**20:7.1f} MiB")
    print(f"  headers+proofs   {median_ms(bare_t)}   {sizes['headers+proofs'] / 2**20:7.1f} MiB   "
          f"(x{statistics.median(full_t) / statistics.median(bare_t):.2f} faster)")
    print("auditor's verification (parse + check, in process):")
    print(f"  with records     {median_ms(verify_t)}   (of which JSON parse {median_ms(parse_t).strip()})")
    print(f"  headers+proofs   {median_ms(verify_bare_t)}")

    export = base / "audit.json"
    with export.open("w") as fh:
        write_export(log, fh)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-I", str(ROOT / "src/op_dbus/audit_verify.py"), str(export), "--key",
                            str(log.public_key_path)], capture_output=True, text=True, check=False)
        runs.append(time.perf_counter() - t)
        assert p.returncode == 0, p.stdout + p.stderr
    print(f"  as a process (python -I audit_verify.py, incl. start-up)  {median_ms(runs)}")

    index = SearchIndex.open(log)
    dt, added = timed(index.sync)
    print(f"\nsearch index (FTS5) built for {added} blocks in {dt:.2f} s; "
          f"search.db {os.path.getsize(index.path) / 2**20:.1f} MiB")
    fts_only, proved = [], []
    for _ in range(args.rounds):
        for q in QUERIES:
            fts_only.append(timed(lambda q=q: index._fts(q, 10))[0])
            proved.append(timed(lambda q=q: index.search(q, limit=10))[0])
    print(f"search latency over {args.blocks} blocks, top 10 ({len(QUERIES)} queries x {args.rounds}, median):")
    print(f"  FTS5 ranking only          {median_ms(fts_only)}")
    print(f"  ranking + 10 proofs (CLI)  {median_ms(proved)}   "
          f"(x{statistics.median(proved) / statistics.median(fts_only):.1f})")
    if args.semantic:
        dt, n = timed(index.embed_missing)
        print(f"embeddings for {n} blocks in {dt:.1f} s")
        sem = [timed(lambda q=q: index.search(q, limit=10, semantic=True))[0] for q in QUERIES for _ in range(2)]
        print(f"  semantic, top 10 + proofs  {median_ms(sem)}")
    index.close()

    head = len(log) - 1
    cheap = [timed(lambda: log.prove(head))[0] for _ in range(20)]
    full = [timed(lambda: log.verify_full(update=False))[0] for _ in range(2)]
    print(f"\nverify --current's log check, prove(head)   {median_ms(cheap)}")
    print(f"verify --full over {args.blocks} blocks        {median_ms(full)}   "
          f"(x{statistics.median(full) / statistics.median(cheap):.0f})")

    dt, outcome = timed(lambda: compact(log))
    print(f"\ncompact: dropped {outcome.dropped} states ({outcome.bytes_freed / 2**20:.1f} MiB) in "  # type: ignore[attr-defined]
          f"{dt * 1e3:.0f} ms")
    log.close()


if __name__ == "__main__":
    main()
