"""Carry out `containers` changes: one action at a time, for all containers at once; undo recorded per step."""

from __future__ import annotations

import asyncio
from pathlib import Path

from op_dbus.backends.containers import (
    ContainerSpec,
    sha256_file,
)
from op_dbus.errors import ApplyFailed, BackendError
from op_dbus.plugin import Change, Context, UndoLog

from . import pods
from .backends import backend, tty_progress
from .diff import PLUGIN
from .model import (
    ACTION_ORDER,
    with_secrets,
)


async def apply(changes: list[Change], ctx: Context, undo: UndoLog) -> None:
    for action in sorted({c.action for c in changes}, key=ACTION_ORDER.__getitem__):
        batch = [c for c in changes if c.action == action]
        if action in ("import", "forget"):
            for c in batch:
                await import_template(c, ctx, undo)
            continue
        # containers are independent of each other: one action runs for all of them at once
        results = await asyncio.gather(*(change_container(c, ctx, undo) for c in batch), return_exceptions=True)
        failures = [(c, r) for c, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
        if failures:
            for _, r in failures:
                if not isinstance(r, (BackendError, ApplyFailed, OSError)):
                    raise r
            text = "; ".join(f"{action} {c.object}: {r}" for c, r in failures)
            raise ApplyFailed(f"containers: {text}")


async def import_template(c: Change, ctx: Context, undo: UndoLog) -> None:
    p = c.payload
    name = p["template"]
    if c.action == "forget":
        for bname in p["backends"]:
            await (await backend(ctx, bname)).remove_template(name)
        return
    source = Path(p["source"])
    if p.get("sha256"):
        got = await asyncio.to_thread(sha256_file, source, tty_progress(f"checking {name}"))
        if got != p["sha256"]:
            raise ApplyFailed(f"template {name}: {source} has sha256 {got}, the state expects {p['sha256']}; "
                              "nothing was imported")
    for bname in p["backends"]:
        b = await backend(ctx, bname)
        existing = (await b.templates()).get(name)
        if existing is not None and (p.get("sha256") is None or existing.sha256 == p["sha256"]):
            continue
        if existing is None:
            undo.record(Change(PLUGIN, c.object, "forget", c.after, None,
                               {"template": name, "backends": [bname]}))
        elif existing.source:
            undo.record(Change(PLUGIN, c.object, "import", c.after, c.before,
                               {"template": name, "source": existing.source, "sha256": existing.sha256,
                                "backends": [bname]}))
        await b.import_template(name, source, p.get("sha256"), tty_progress(f"importing {name} into {bname}"))


async def change_container(c: Change, ctx: Context, undo: UndoLog) -> None:
    if c.payload.get("pod"):
        await pods.apply(c, ctx, undo)
        return
    b = await backend(ctx, c.payload["backend"])
    name = c.object
    spec: ContainerSpec | None = c.payload.get("spec")
    if spec is not None:
        spec = with_secrets(spec, c.payload.get("secrets") or {})  # before anything is removed
    if c.action in ("start", "stop"):
        undo.record(Change(PLUGIN, name, "stop" if c.action == "start" else "start", c.after, c.before,
                           c.payload))
        await (b.start(name) if c.action == "start" else b.stop(name))
        return
    previous = (await b.inspect([name])).get(name) if c.action in ("remove", "recreate") else None
    if previous is not None and not previous.managed:
        raise ApplyFailed(f"{b.name} container {name} was not created by op-dbus; it is left alone")
    if c.action == "create" or (c.action == "recreate" and previous is None):
        # a recreation whose container is already gone (a rollback after a failed create) is a creation
        assert spec is not None
        undo.record(Change(PLUGIN, name, "remove", c.after, c.before, {"backend": b.name, "spec": None}))
        await b.create(spec)
        if c.payload.get("start"):
            await b.start(name)
        return
    if previous is None:
        return  # removing what is already gone
    restore = previous.spec()
    undo_payload = {"backend": b.name, "spec": restore, "start": previous.running}
    if c.action == "remove":
        undo.record(Change(PLUGIN, name, "create", c.after, c.before, undo_payload))
        await b.remove(name)
        return
    assert spec is not None
    undo.record(Change(PLUGIN, name, "recreate", c.after, c.before, undo_payload))
    await b.remove(name)
    await b.create(spec)
    if c.payload.get("start"):
        await b.start(name)
