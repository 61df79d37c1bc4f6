"""Change notifications from NetworkManager: profiles added, removed, updated, and activation changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from op_dbus.backends import dbus
from op_dbus.plugin import SUBSCRIBED, WatchEvent

from .query import CONNECTION, NM, NM_PATH, SETTINGS

RULES = [
    f"type='signal',sender='{NM}',interface='{SETTINGS}',member='NewConnection'",
    f"type='signal',sender='{NM}',interface='{SETTINGS}',member='ConnectionRemoved'",
    f"type='signal',sender='{NM}',interface='{CONNECTION}',member='Updated'",
    f"type='signal',sender='{NM}',interface='{dbus.PROPERTIES}',member='PropertiesChanged',path='{NM_PATH}'",
]


def _relevant(msg: Any) -> bool:
    if msg.interface == dbus.PROPERTIES:
        return bool(msg.body) and msg.body[0] == NM and "ActiveConnections" in (msg.body[1] or {})
    return msg.interface in (SETTINGS, CONNECTION)


async def watch(client: dbus.Client, plugin: str) -> AsyncIterator[WatchEvent]:
    """Signals name object paths, not profile ids: every event says "something in the section" and the agent's
    query finds out what."""
    async for msg in client.signals(RULES, _relevant, ready=True):
        if msg is None:
            yield WatchEvent(plugin, source=SUBSCRIBED)
            continue
        yield WatchEvent(plugin, source=f"{msg.interface}.{msg.member}")
