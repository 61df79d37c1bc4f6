"""The `storage` section's change notifications: UDisks2's InterfacesAdded/Removed and PropertiesChanged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from op_dbus.backends import dbus
from op_dbus.backends import udisks2 as u
from op_dbus.plugin import SUBSCRIBED, WatchEvent

from .model import StorageState
from .query import find_block

# what can change a declared device's state: a filesystem appearing or going (format, wipe), a mount, fstab
WATCHED = {u.BLOCK: {"IdType", "IdUsage", "IdLabel", "Configuration"}, u.FILESYSTEM: {"MountPoints"}}


async def watch(client: dbus.Client, scope: StorageState) -> AsyncIterator[WatchEvent]:
    disks = u.UDisks2(client)
    paths: dict[str, str] = {}  # object path -> declared device

    async def refresh() -> None:
        objects = await disks.objects()
        paths.clear()
        for device in scope.filesystems:
            path = find_block(objects, device)
            if path is not None:
                paths[path] = device

    rules = [f"type='signal',sender='{u.UDISKS2}',interface='{u.OBJECT_MANAGER}'",
             f"type='signal',sender='{u.UDISKS2}',interface='{dbus.PROPERTIES}',member='PropertiesChanged'"]

    def accept(msg: Any) -> bool:
        if msg.interface == u.OBJECT_MANAGER:
            return msg.member in ("InterfacesAdded", "InterfacesRemoved")
        if msg.interface == dbus.PROPERTIES and msg.member == "PropertiesChanged":
            names = set(msg.body[1]) | set(msg.body[2])
            return bool(names & WATCHED.get(msg.body[0], set()))
        return False

    async for msg in client.signals(rules, accept, ready=True):
        if msg is None:
            await refresh()
            yield WatchEvent("storage", source=SUBSCRIBED)
            continue
        if msg.interface == u.OBJECT_MANAGER:
            # a device appeared or went (or became a filesystem): the map of paths may be stale
            await refresh()
            device = paths.get(msg.body[0])
            if device is not None or msg.member == "InterfacesRemoved":
                yield WatchEvent("storage", (device,) if device else (), f"udisks2 {msg.member}")
            continue
        assert msg.path is not None  # the D-Bus spec requires a path on every signal
        device = paths.get(msg.path)
        if device is not None:
            yield WatchEvent("storage", (device,), f"udisks2 {msg.body[0].rsplit('.', 1)[-1]} changed")
