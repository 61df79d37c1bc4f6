"""Health probes that decide whether to keep a change: TCP reachability, a D-Bus name, a unit active.

Pre-flight runs every probe once; only the ones that pass before the change are required after it, so
a probe that was already failing cannot make a good change roll back.
"""

from __future__ import annotations

import asyncio

from op_dbus.errors import ApplyFailed, OpDbusError
from op_dbus.plugin import Context
from op_dbus.state import Probe

RETRY_EVERY = 0.2


async def check(probe: Probe, ctx: Context) -> str | None:
    """None when the probe passes, else why it does not."""
    # Imported here: the D-Bus client library is only loaded by a command that has a probe.
    from op_dbus.backends import dbus, tcp

    try:
        if probe.tcp is not None:
            return await tcp.reachable(probe.tcp)
        bus = await dbus.system_client(ctx)
        if probe.dbus_name is not None:
            owned = await dbus.name_has_owner(bus, probe.dbus_name)
            return None if owned else f"{probe.dbus_name} has no owner on the bus"
        assert probe.unit_active is not None
        state = await dbus.unit_active_state(bus, probe.unit_active)
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
