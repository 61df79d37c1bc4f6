"""Health probes that decide whether to keep a change: TCP reachability, a D-Bus name, a unit active.

Pre-flight runs every probe once; only the ones that pass before the change are required after it, so
a probe that was already failing cannot make a good change roll back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from op_dbus.errors import ApplyFailed, OpDbusError
from op_dbus.plugin import Context
from op_dbus.state import Probe

if TYPE_CHECKING:
    from op_dbus.backends import dbus

RETRY_EVERY = 0.2


async def _bus(ctx: Context) -> dbus.Client:
    # Imported here: the D-Bus client library is only loaded by a command that has a D-Bus probe.
    from op_dbus.backends import dbus

    return await ctx.resource(  # type: ignore[no-any-return]
        "dbus.system", lambda: dbus.open_client(ctx.settings.bus_address, ctx.settings.job_timeout), dbus.close_client)


async def check(probe: Probe, ctx: Context) -> str | None:
    """None when the probe passes, else why it does not."""
    try:
        if probe.tcp is not None:
            host, _, port = probe.tcp.rpartition(":")
            try:
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 2.0)
            except (OSError, TimeoutError) as e:
                return f"no TCP connection to {probe.tcp}: {e or type(e).__name__}"
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return None
        bus = await _bus(ctx)
        if probe.dbus_name is not None:
            (owned,) = await bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                      "NameHasOwner", "s", [probe.dbus_name])
            return None if owned else f"{probe.dbus_name} has no owner on the bus"
        (rows,) = await bus.call("org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                                 "org.freedesktop.systemd1.Manager", "ListUnitsByNames", "as", [[probe.unit_active]])
        state = rows[0][3]
        return None if state == "active" else f"{probe.unit_active} is {state}"
    except OpDbusError as e:
        return str(e).splitlines()[0]


async def passing(probes: list[Probe], ctx: Context) -> list[Probe]:
    """The probes that pass now (before the change): these become required."""
    results = await asyncio.gather(*(check(p, ctx) for p in probes))
    return [p for p, why in zip(probes, results, strict=True) if why is None]


async def require(probes: list[Probe], ctx: Context) -> None:
    """Wait for every probe to pass within its own timeout; raise ApplyFailed naming those that did not."""

    async def settle(p: Probe) -> str | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + p.timeout
        while True:
            why = await check(p, ctx)
            if why is None or loop.time() >= deadline:
                return why
            await asyncio.sleep(RETRY_EVERY)

    failures = [f"{p.describe()}: {why}" for p, why in
                zip(probes, await asyncio.gather(*(settle(p) for p in probes)), strict=True) if why]
    if failures:
        raise ApplyFailed("health probes that passed before the change fail after it: " + "; ".join(failures))
