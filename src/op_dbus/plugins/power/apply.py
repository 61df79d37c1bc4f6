"""Set power-profiles-daemon's ActiveProfile, recording the previous one as the undo step."""

from __future__ import annotations

from op_dbus.backends import dbus
from op_dbus.backends.dbus_types import from_json
from op_dbus.plugin import Change, UndoLog

from .query import ppd, profiles


async def run(client: dbus.Client, changes: list[Change], undo: UndoLog) -> None:
    for change in changes:
        name, path = await ppd(client)
        before, _ = await profiles(client)
        undo.record(Change("power", change.object, "set", before=change.after, after=before,
                           payload={"profile": before}))
        await client.call(name, path, dbus.PROPERTIES, "Set", "ssv",
                          [name, "ActiveProfile", from_json("v", {"type": "s", "data": change.payload["profile"]})])
