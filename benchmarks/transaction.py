"""What the transaction costs: a 100-change apply with and without it, and a rollback of 100 changes.

    python benchmarks/transaction.py [ROUNDS | --smoke]

The changes are 100 address adds on a veth in a network namespace the benchmark creates (the fastest
plugin path, so the transaction's fixed costs show the most). "Without" is the same apply with its block
in the audit log but no transaction: plan + apply + verify + append. "Transaction" is Engine.apply:
state-dir lock, checkpoint, intent record (one fdatasync), undo recording, verify, append, record
cleared. Variants are interleaved; medians and ratios are printed.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from op_dbus.engine import Engine, actor, summarise
from op_dbus.ledger import Ledger
from op_dbus.plugin import Context, Settings, UndoLog
from op_dbus.state import validate_document

NETNS = "opdbus-bench-tx"


def doc(n: int) -> object:
    addresses = [{"ip": f"198.18.{10 + i // 250}.{1 + i % 250}", "prefix": 16} for i in range(n)]
    return validate_document({"version": 1, "plugins": {"net": {"interfaces": [
        {"name": "v0", "type": "veth", "state": "up", "veth": {"peer": "v1"},
         "ipv4": {"enabled": True, "address": addresses}}]}}}, "bench")


async def main(rounds: int) -> None:
    on, off = doc(100), doc(0)
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp) / "state"
        ctx = Context(Settings(netns=NETNS, state_dir=state_dir))
        engine = Engine(ctx, ledger=lambda: Ledger.open(state_dir))
        async with ctx:
            async def bare(target: object, record: bool = False) -> UndoLog:
                plan = await engine.plan(target)  # type: ignore[arg-type]
                undo = UndoLog()
                for name, plugin in plan.plugins.items():
                    await plugin.apply(plan.changes[name], ctx, undo)
                after = await engine._verify(plan)
                if record:
                    with Ledger.open(state_dir) as ledger:
                        ledger.append("apply", [c.to_record() for c in plan.all_changes], plan.snapshot(after),
                                      actor=actor(), summary=summarise(plan.all_changes))
                return undo

            await bare(off)
            times: dict[str, list[float]] = {"bare": [], "without": [], "transaction": [], "rollback": []}
            for _ in range(rounds):
                t = time.perf_counter()
                await bare(on)
                times["bare"].append(time.perf_counter() - t)
                await bare(off)

                t = time.perf_counter()
                await bare(on, record=True)
                times["without"].append(time.perf_counter() - t)
                await bare(off)

                t = time.perf_counter()
                result = await engine.apply(on)  # type: ignore[arg-type]
                times["transaction"].append(time.perf_counter() - t)
                assert len(result.applied) == 100, len(result.applied)
                await bare(off)

                undo = await bare(on)
                t = time.perf_counter()
                errors = await engine.rollback(undo)
                times["rollback"].append(time.perf_counter() - t)
                assert not errors and len(undo) == 100, (errors, len(undo))
    m = {k: statistics.median(v) for k, v in times.items()}
    overhead = m["transaction"] / m["without"] - 1
    print(f"100-change apply (100 addresses in a netns), {rounds} interleaved rounds, medians")
    print(f"  plan+apply+verify, no log       {m['bare'] * 1e3:8.2f} ms")
    print(f"  the apply without transaction   {m['without'] * 1e3:8.2f} ms   (plan+apply+verify+block)")
    print(f"  the apply as a transaction      {m['transaction'] * 1e3:8.2f} ms   overhead {overhead * 100:+.1f}%  "
          f"({'ok' if overhead < 0.20 else 'MISSED'}: bar < 20%); "
          f"{(m['transaction'] - m['without']) * 1e3:.2f} ms in absolute terms")
    print(f"  rollback of 100 changes  {m['rollback'] * 1e3:8.2f} ms")


if __name__ == "__main__":
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        subprocess.run(["ip", "-n", NETNS, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True)
        # --smoke: one round (a test runs this to prove the benchmark still runs)
        asyncio.run(main(1 if "--smoke" in sys.argv[1:] else int(sys.argv[1]) if len(sys.argv) > 1 else 30))
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)
