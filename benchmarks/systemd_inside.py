"""Runs inside the lab system (with op-dbus installed there): op-dbus's native D-Bus path vs systemctl processes.

Variants are interleaved round by round and summarised by medians; ratios are what to read, since
absolute times drift on a shared machine. Started by benchmarks/systemd_ops.py.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from op_dbus.backends import dbus
from op_dbus.plugin import Change, Context, Settings, UndoLog
from op_dbus.plugins.systemd import MANAGER, MANAGER_PATH, SYSTEMD, SystemdPlugin, SystemdState, UnitState

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
LOOP_EVERY = 5  # the 20-process systemctl loop is slow; time it every LOOP_EVERY rounds
UNIT = "bench-simple.service"
BATCH = [f"bench-{i}.service" for i in range(10)]  # written by systemd_ops.py before this runs


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


async def main() -> None:
    plugin = SystemdPlugin()
    async with Context(Settings()) as ctx:
        everything = await plugin.query(ctx)
        names = [n for n in everything.units if n.endswith(".service")][:50]
        scope = SystemdState(units={n: UnitState(active_state="active", enabled=True) for n in names})
        scope_active = SystemdState(units={n: UnitState(active_state="active") for n in names})
        times: dict[str, list[float]] = {}

        def record(key: str, seconds: float) -> None:
            times.setdefault(key, []).append(seconds)

        async def timed_async(key: str, coro: Any) -> None:
            t = time.perf_counter()
            await coro
            record(key, time.perf_counter() - t)

        def timed(key: str, *argvs: list[str]) -> None:
            t = time.perf_counter()
            for argv in argvs:
                sh(*argv)
            record(key, time.perf_counter() - t)

        async def cold_read() -> None:
            async with Context(Settings()) as fresh:
                await plugin.query(fresh, scope=scope)

        def change(action: str) -> list[Change]:
            return [Change("systemd", UNIT, action)]

        async def enable_disable() -> None:
            await plugin.apply(change("enable"), ctx, UndoLog())
            await plugin.apply(change("disable"), ctx, UndoLog())

        async def start_stop() -> None:
            await plugin.apply(change("start"), ctx, UndoLog())
            await plugin.apply(change("stop"), ctx, UndoLog())

        async def enable_disable_batch() -> None:
            await plugin.apply([Change("systemd", u, "enable") for u in BATCH], ctx, UndoLog())
            await plugin.apply([Change("systemd", u, "disable") for u in BATCH], ctx, UndoLog())

        async def reload_twice() -> None:
            client = await dbus.system_client(ctx)
            for _ in range(2):
                await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "Reload")

        show = ["systemctl", "show", "--property=Id,ActiveState,UnitFileState", *names]
        for round_no in range(ROUNDS):
            await timed_async("read50.native", plugin.query(ctx, scope=scope))
            await timed_async("read50.native_cold", cold_read())
            timed("read50.systemctl", show)
            await timed_async("active50.native", plugin.query(ctx, scope=scope_active))
            timed("active50.systemctl", ["systemctl", "show", "--property=Id,ActiveState", *names])
            await timed_async("enable_disable.native", enable_disable())
            timed("enable_disable.systemctl", ["systemctl", "enable", "-q", UNIT], ["systemctl", "disable", "-q", UNIT])
            await timed_async("reload_x2.native", reload_twice())
            await timed_async("enable_disable10.native", enable_disable_batch())
            timed("enable_disable10.systemctl_best", ["systemctl", "enable", "-q", *BATCH],
                  ["systemctl", "disable", "-q", *BATCH])
            if round_no % LOOP_EVERY == 0:
                timed("enable_disable10.systemctl_loop", *[["systemctl", "enable", "-q", u] for u in BATCH],
                      *[["systemctl", "disable", "-q", u] for u in BATCH])
            await timed_async("start_stop.native", start_stop())
            timed("start_stop.systemctl", ["systemctl", "start", UNIT], ["systemctl", "stop", UNIT])
            timed("help.op-dbus", ["/opt/op-dbus/bin/op-dbus", "--help"])
            timed("help.systemctl", ["systemctl", "--help"])
            timed("true.process", ["/bin/true"])
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}))


asyncio.run(main())
