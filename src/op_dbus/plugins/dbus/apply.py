"""Carry out `dbus` changes: Set, or the service's own setter method, per object; undo recorded before each call."""

from __future__ import annotations

from typing import Any

from op_dbus.backends import dbus
from op_dbus.backends.dbus_types import (
    InterfaceInfo,
    PropertyInfo,
    argument_signatures,
    from_json,
    variant,
)
from op_dbus.errors import ApplyFailed, OpDbusError
from op_dbus.plugin import Change, Context, UndoLog

from .diff import PLUGIN, same
from .model import (
    referenced,
    substitute,
)
from .query import introspect, read_all


def _change_key(c: Change) -> tuple[str, str]:
    return c.payload["service"], c.payload["path"]


async def apply(changes: list[Change], ctx: Context, undo: UndoLog) -> None:
    client = await dbus.system_client(ctx)
    if changes and all(c.payload.get("undo") for c in changes):
        await roll_back(changes, ctx, client)
        return
    i = 0
    while i < len(changes):
        # One call for every change in a row that the same setter of the same object covers.
        group = [changes[i]]
        spec = group[0].payload["setter"]
        while spec is not None and i + len(group) < len(changes):
            nxt = changes[i + len(group)]
            if (_change_key(nxt), nxt.payload["interface"], nxt.payload["setter"]) != \
                    (_change_key(group[0]), group[0].payload["interface"], spec):
                break
            group.append(nxt)
        await apply_group(ctx, client, group, undo)
        i += len(group)


async def apply_group(ctx: Context, client: dbus.Client, group: list[Change], undo: UndoLog) -> None:
    c = group[0]
    info = await introspect(ctx, c.payload["service"], c.payload["path"])
    iface = info.interfaces.get(c.payload["interface"])
    if iface is None or c.payload["property"] not in iface.properties:
        raise ApplyFailed(f"{c.object}: the service no longer has this property")
    spec = c.payload["setter"]
    if spec is None:
        await set_property(client, c, iface.properties[c.payload["property"]], undo)
    else:
        await call_setter(client, group, iface, spec, undo)


async def roll_back(changes: list[Change], ctx: Context, client: dbus.Client) -> None:
    """Undo steps one by one: a step whose property already has its old value is skipped (the change it
    undoes may be the one that failed), and one failure does not stop the others."""
    errors = []
    for c in changes:
        p = c.payload
        try:
            live = await read_all(client, p["service"], p["path"], p["interface"], [p["property"]])
            if p["property"] in live and same(live[p["property"]], p["value"]):
                continue
            await apply_group(ctx, client, [c], UndoLog())
        except OpDbusError as e:
            errors.append(f"{c.object}: {e.message}")
    if errors:
        raise ApplyFailed("could not restore: " + "; ".join(errors))


async def set_property(client: dbus.Client, c: Change, prop: PropertyInfo, undo: UndoLog) -> None:
    value = _convert(prop.signature, c.payload["value"], c.object)
    record_undo(c, undo)
    p = c.payload
    await client.call(p["service"], p["path"], dbus.PROPERTIES, "Set", "ssv",
                      [p["interface"], p["property"], variant(prop.signature, value)])


async def call_setter(client: dbus.Client, group: list[Change], iface: InterfaceInfo,
                       spec: dict[str, Any], undo: UndoLog) -> None:
    p = group[0].payload
    args: list[Any] = spec["args"]
    values = {c.payload["property"]: c.payload["value"] for c in group}
    others = [r for r in referenced(args) if r not in values]
    if others:
        live = await read_all(client, p["service"], p["path"], p["interface"], others)
        for name in others:
            if name not in live:
                raise ApplyFailed(f"{group[0].object}: cannot read {name}, which {spec['method']} also sets")
            values[name] = live[name]
    method_iface = spec.get("interface") or p["interface"]
    method = iface.methods.get(spec["method"]) if method_iface == iface.name else None
    if method is None:
        raise ApplyFailed(f"{group[0].object}: {method_iface} has no method {spec['method']}")
    types = argument_signatures(method.in_signature)
    body = [_convert(t, v, group[0].object) for t, v in zip(types, substitute(args, values), strict=True)]
    for c in group:
        record_undo(c, undo)
    await client.call(p["service"], p["path"], method_iface, spec["method"], method.in_signature, body)


def record_undo(c: Change, undo: UndoLog) -> None:
    before = (c.before or {}).get(c.payload["property"])
    if before is None:
        return  # the property could not be read before: there is nothing known to go back to
    undo.record(Change(PLUGIN, c.object, "set", c.after, c.before,
                       payload={**c.payload, "value": before, "undo": True}))


def _convert(signature: str, value: Any, what: str) -> Any:
    try:
        return from_json(signature, value)
    except ValueError as e:
        raise ApplyFailed(f"{what}: value does not fit the D-Bus type {signature}: {e}") from None
