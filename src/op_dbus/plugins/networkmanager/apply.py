"""Apply `networkmanager` changes: AddConnection2 / Update2 / Delete and (De)ActivateConnection, each with undo."""

from __future__ import annotations

import asyncio
from typing import Any

from op_dbus.backends import dbus
from op_dbus.backends.dbus_types import from_json
from op_dbus.errors import ApplyFailed, BackendError
from op_dbus.plugin import Change, UndoLog

from . import codec
from .diff import PLUGIN
from .query import ACTIVE, CONNECTION, NM, NM_PATH, SETTINGS, SETTINGS_PATH, SETTINGS_SIG, LiveProfile, read_profiles

ACTIVE_ACTIVATED, ACTIVE_DEACTIVATED = 2, 4
TO_DISK = 0x1  # AddConnection2 / Update2 flag: store the profile (keyfile), not only in memory


async def _one(client: dbus.Client, pid: str) -> LiveProfile | None:
    profs = (await read_profiles(client, {pid})).get(pid)
    return profs[0] if profs else None


async def _add(client: dbus.Client, settings: dict[str, Any]) -> str:
    path, _result = await client.call(NM, SETTINGS_PATH, SETTINGS, "AddConnection2", "a{sa{sv}}ua{sv}",
                                      [from_json(SETTINGS_SIG, settings), TO_DISK, {}])
    return str(path)


async def _update(client: dbus.Client, path: str, settings: dict[str, Any]) -> None:
    await client.call(NM, path, CONNECTION, "Update2", "a{sa{sv}}ua{sv}",
                      [from_json(SETTINGS_SIG, settings), TO_DISK, {}])


async def _activate(client: dbus.Client, path: str, what: str) -> None:
    """Activate and wait until NetworkManager says activated (or gave up), within the client's timeout."""
    try:
        (active,) = await client.call(NM, NM_PATH, NM, "ActivateConnection", "ooo", [path, "/", "/"])
    except BackendError as exc:
        raise ApplyFailed(f"networkmanager: activating {what} failed: {exc}") from None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + client.timeout
    while loop.time() < deadline:
        try:
            state = await client.get_property(NM, str(active), ACTIVE, "State")
        except BackendError:
            state = ACTIVE_DEACTIVATED  # the active connection object is gone: activation failed
        if state == ACTIVE_ACTIVATED:
            return
        if state == ACTIVE_DEACTIVATED:
            raise ApplyFailed(f"networkmanager: NetworkManager could not activate {what} (see its journal: "
                              "`journalctl -u NetworkManager`)")
        await asyncio.sleep(0.05)
    raise ApplyFailed(f"networkmanager: {what} was not activated within {client.timeout:.0f} s")


async def run(client: dbus.Client, changes: list[Change], undo: UndoLog) -> None:
    for change in changes:
        await _run_one(client, change, undo)


def _inverse(change: Change, action: str, payload: dict[str, Any]) -> Change:
    return Change(PLUGIN, change.object, action, before=change.after, after=change.before, payload=payload)


async def _run_one(client: dbus.Client, change: Change, undo: UndoLog) -> None:
    pid = change.payload["id"]
    what = f"profile {pid!r}"
    action = change.action
    if action == "create":
        groups = change.payload["groups"]
        settings = codec.merge({"connection": {"id": {"type": "s", "data": pid}}}, groups)
        await _add(client, settings)
        live = await _one(client, pid)
        if live is None:
            raise ApplyFailed(f"networkmanager: {what} was added but NetworkManager does not list it")
        undo.record(_inverse(change, "delete", {"id": pid, "uuid": live.uuid}))
        return
    if action == "restore":  # undo of a delete: the whole profile as it was, secrets and uuid included
        await _add(client, change.payload["settings"])
        return
    live = await _one(client, pid)
    if live is None:
        raise ApplyFailed(f"networkmanager: {what} disappeared while applying")
    if action == "delete":
        if "uuid" in change.payload and live.uuid != change.payload["uuid"]:
            raise ApplyFailed(f"networkmanager: {what} is no longer the profile op-dbus created (uuid changed)")
        saved = live.with_secrets()
        if live.active_path is not None:
            await client.call(NM, NM_PATH, NM, "DeactivateConnection", "o", [live.active_path])
        await client.call(NM, live.path, CONNECTION, "Delete")
        # Undo runs newest first: the profile comes back, then is activated again.
        if live.active_path is not None:
            undo.record(_inverse(change, "activate", {"id": pid}))
        undo.record(_inverse(change, "restore", {"id": pid, "settings": saved}))
        return
    if action in ("update", "put"):
        saved = live.with_secrets()
        new = change.payload["settings"] if action == "put" else codec.merge(saved, change.payload["groups"])
        await _update(client, live.path, new)
        reactivate = bool(change.payload.get("reactivate"))
        undo.record(_inverse(change, "put", {"id": pid, "settings": saved, "reactivate": reactivate}))
        if reactivate:
            await _activate(client, live.path, what)
        return
    if action == "activate":
        await _activate(client, live.path, what)
        undo.record(_inverse(change, "deactivate", {"id": pid}))
        return
    if action == "deactivate":
        if live.active_path is not None:
            await client.call(NM, NM_PATH, NM, "DeactivateConnection", "o", [live.active_path])
        undo.record(_inverse(change, "activate", {"id": pid}))
        return
    raise ApplyFailed(f"networkmanager: unknown change {action!r}")
