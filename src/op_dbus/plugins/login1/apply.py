"""Carry out `login1` changes: linger first (reversible, with undo), then terminations (not reversible)."""

from __future__ import annotations

import asyncio
import pwd
from typing import Any

from op_dbus.backends import dbus
from op_dbus.errors import ApplyFailed, BackendError
from op_dbus.plugin import Change, Context, UndoLog

from .diff import PLUGIN
from .model import LOGIN1, LOGIN1_PATH, MANAGER


async def apply(changes: list[Change], ctx: Context, undo: UndoLog) -> None:
    client = await dbus.system_client(ctx)
    # Reversible first: a failure there is rolled back before anything irreversible has happened.
    for c in [c for c in changes if c.action != "terminate"]:
        uid = c.payload["uid"]
        if uid is None:
            uid = _uid(c.payload["user"])
        undo.record(Change(PLUGIN, c.object, "unlinger" if c.payload["linger"] else "linger", c.after, c.before,
                           payload={**c.payload, "uid": uid, "linger": not c.payload["linger"]}))
        await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "SetUserLinger", "ubb", [uid, c.payload["linger"], False])
    terminations = [c for c in changes if c.action == "terminate"]
    for c in terminations:
        # No inverse exists: killed processes cannot be brought back (the change says reversible: false).
        undo.irreversible(c)
        p = c.payload
        if p.get("whole_user") and p.get("uid") is not None:
            await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "TerminateUser", "u", [p["uid"]])
        else:
            for sid in p["ids"]:
                await _ignore_gone(client.call(LOGIN1, LOGIN1_PATH, MANAGER, "TerminateSession", "s", [sid]))
    if terminations:
        await wait_gone({sid for c in terminations for sid in c.payload["ids"]}, client,
                              ctx.settings.job_timeout)


async def wait_gone(ids: set[str], client: dbus.Client, timeout: float) -> None:
    """logind removes a session once its scope's processes are gone; wait for that rather than guess."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        (rows,) = await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "ListSessions")
        left = sorted(ids & {row[0] for row in rows})
        if not left:
            return
        if loop.time() > deadline:
            raise ApplyFailed(f"sessions still present {timeout:.0f} s after TerminateSession: {', '.join(left)}",
                              hint="look at `loginctl session-status ID` for processes that ignore SIGTERM")
        await asyncio.sleep(0.05)


async def _ignore_gone(call: Any) -> None:
    try:
        await call
    except BackendError as e:
        # the session ended on its own between the plan and now: the goal is reached
        if e.code != "org.freedesktop.login1.NoSuchSession":
            raise


def _uid(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ApplyFailed(f"no such user: {name!r}") from None
