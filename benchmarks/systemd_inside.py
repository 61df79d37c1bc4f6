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

from op_dbus.plugin import Change, Context, Settings, UndoLog
from op_dbus.plugins.systemd import SystemdPlugin, SystemdState, UnitState

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 30
UNIT = "bench-simple.service"


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


async def main() -> None:
    plugin = SystemdPlugin()
    async with Context(Settings()) as ctx:
        everything = await plugin.query(ctx)
        names = [n for n in everything.units if n.endswith(".service")][:50]
        scope = SystemdState(units={n: UnitState(active_state="active", enabled=True) for n in names})
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

        show = ["systemctl", "show", "--property=Id,ActiveState,UnitFileState", *names]
        for _ in range(ROUNDS):
            await timed_async("read50.native", plugin.query(ctx, scope=scope))
            await timed_async("read50.native_cold", cold_read())
            timed("read50.systemctl", show)
            await timed_async("enable_disable.native", enable_disable())
            timed("enable_disable.systemctl", ["systemctl", "enable", "-q", UNIT], ["systemctl", "disable", "-q", UNIT])
            await timed_async("start_stop.native", start_stop())
            timed("start_stop.systemctl", ["systemctl", "start", UNIT], ["systemctl", "stop", UNIT])
            timed("help.op-dbus", ["/opt/op-dbus/bin/op-dbus", "--help"])
            timed("help.systemctl", ["systemctl", "--help"])
            timed("true.process", ["/bin/true"])
    print(json.dumps({k: statistics.median(v) for k, v in times.items()}))


asyncio.run(main())
