"""Carry out `systemd` changes: unit-file calls batched per kind plus one Reload, jobs issued together."""

from __future__ import annotations

import asyncio
import time
from itertools import groupby
from typing import Any

from op_dbus.backends import dbus
from op_dbus.errors import ApplyFailed, OpDbusError
from op_dbus.plugin import Change, UndoLog

from .diff import inverse
from .model import FILE_METHODS, MANAGER, MANAGER_PATH, PREMATURE_ACTIVE_TYPES, SERVICE, SYSTEMD, UnitInfo


async def change_files(client: dbus.Client, batch: list[Change], infos: dict[str, UnitInfo], undo: UndoLog) -> None:
    for action, group in groupby(batch, key=lambda c: c.action):
        items = list(group)
        method, signature, args = FILE_METHODS[action]
        files = [infos[c.object].id if infos[c.object].exists else c.object for c in items]
        for c in items:
            undo.record(inverse(c))
        reply = await client.call(SYSTEMD, MANAGER_PATH, MANAGER, method, signature, args(files))
        if action == "enable" and not reply[0]:
            raise ApplyFailed(f"cannot enable {', '.join(files)}: no [Install] section")
    # One daemon reload for the whole batch, as `systemctl enable` does after each call.
    await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "Reload")


async def run_jobs(client: dbus.Client, batch: list[Change], undo: UndoLog, timeout: float) -> float | None:
    """Start and stop jobs together, each awaited through JobRemoved; returns when the settle window of a started
    unit with a premature \"active\" begins (monotonic), None if no such unit started."""
    settle_from = None
    await subscribe(client)
    loop = asyncio.get_running_loop()
    finished: dict[str, str] = {}
    waiting: dict[str, asyncio.Future[str]] = {}

    def job_removed(msg: Any) -> None:
        _id, job, _unit, result = msg.body
        if job in waiting and not waiting[job].done():
            waiting[job].set_result(result)
        else:
            finished[job] = result  # the signal can beat the StartUnit reply

    stop_listening = client.on_signal(job_removed, interface=MANAGER, member="JobRemoved")
    try:
        jobs: list[tuple[Change, str]] = []
        for c in batch:
            undo.record(inverse(c))
        replies = await asyncio.gather(*(
            client.call(SYSTEMD, MANAGER_PATH, MANAGER, "StartUnit" if c.action == "start" else "StopUnit",
                        "ss", [c.object, "replace"])
            for c in batch
        ))
        for c, (job,) in zip(batch, replies, strict=True):
            jobs.append((c, job))
            if job not in finished:
                waiting[job] = loop.create_future()
        started = [c.object for c in batch if c.action == "start"]
        # Which started units need a settle window: asked while their jobs run.
        premature = asyncio.ensure_future(premature_active(client, started))
        try:
            async with asyncio.timeout(timeout):
                for job, fut in waiting.items():
                    finished[job] = await fut
                if await premature:
                    settle_from = time.monotonic()
        except TimeoutError:
            late = [c.object for c, job in jobs if job not in finished]
            raise ApplyFailed(f"systemd jobs did not finish within {timeout:.0f} s: {', '.join(late)}",
                              hint="raise --job-timeout, or look at `journalctl -u UNIT`") from None
        failed = [(c, finished[job]) for c, job in jobs if finished[job] != "done"]
        if failed:
            what = "; ".join(f"{c.action} {c.object}: job {result}" for c, result in failed)
            raise ApplyFailed(f"systemd jobs failed: {what}",
                              hint=f"see `journalctl -u {failed[0][0].object}` on the managed system")
    finally:
        stop_listening()
    return settle_from


async def premature_active(client: dbus.Client, names: list[str]) -> bool:
    """Whether any of the (just started) units is a service of a type whose "active" comes before it is up."""
    services = [n for n in names if n.endswith(".service")]
    if not services:
        return False
    try:
        (rows,) = await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnitsByNames", "as", [services])
        types = await asyncio.gather(*(client.get_property(SYSTEMD, row[6], SERVICE, "Type") for row in rows))
    except OpDbusError:
        return True  # unknown: keep the window
    return any(t in PREMATURE_ACTIVE_TYPES for t in types)


async def subscribe(client: dbus.Client) -> None:
    # systemd emits JobRemoved only once some client has called Subscribe; the match rule routes it to us.
    if "systemd.subscribed" in client.flags:
        return
    await client.add_match(f"type='signal',sender='{SYSTEMD}',interface='{MANAGER}',member='JobRemoved'")
    await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "Subscribe")
    client.flags.add("systemd.subscribed")
