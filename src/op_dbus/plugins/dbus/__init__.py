"""The `dbus` plugin: properties of any D-Bus service, declared by service, object path and interface.

State section::

    {"org.freedesktop.hostname1": {"/org/freedesktop/hostname1": {
         "org.freedesktop.hostname1": {"StaticHostname": "web-01"}}},
     "setters": {"com.example.Config1": {"Colour": {"method": "SetColour", "args": ["$Colour"]}}}}

Types come from the service's own introspection: before anything is applied, every declared value is checked
against its property's D-Bus signature (see `op_dbus.backends.dbus_types` for the JSON form of each type).
A writable property is set with `Properties.Set`. Many system services publish read-only properties and a
setter method instead; for the well-known ones (hostname1, timedate1, locale1) the table `WELL_KNOWN_SETTERS`
says which method sets which property, and `setters` in the section adds or overrides entries for any other
interface. A setter's `args` are JSON values; a string `"$Name"` stands for property `Name` of the same
interface (its declared value, else its live value), `"$$..."` for a literal string starting with `$`. A
method that sets several properties at once (locale1's `SetX11Keyboard`) is called once for all of them.
Services that are bus-activatable are started by the bus on the first call.

Watching (the agent): PropertiesChanged of each declared object and interface (changed and invalidated names
alike), matched by the service's well-known name, which the bus resolves to its current owner on every signal,
so the subscription outlives the service going away and coming back (bus activation, a restart). A service
that (re)appears (NameOwnerChanged) may have come back with other values, so that is reported too. As root, a
bus monitor notes who called the service's methods to name them as the origin of a change.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from op_dbus.backends.dbus_types import InterfaceInfo, SignatureMismatch, argument_signatures, from_json
from op_dbus.errors import BackendError, Problem, ServiceUnavailable
from op_dbus.plugin import Change, Context, Plugin, UndoLog, WatchEvent
from op_dbus.state import format_path

from . import apply as applier
from . import query
from . import watch as watcher
from .diff import diff as compute_diff
from .model import (
    WELL_KNOWN_SETTERS,
    DbusState,
    Setter,
    object_name,
    referenced,
    setter_for,
    substitute,
)
from .query import introspect, read_all
from .watch import changed_objects, service_objects, watch_rules, watched

__all__ = ["WELL_KNOWN_SETTERS", "DbusPropertiesPlugin", "DbusState", "Setter", "changed_objects", "introspect",
           "object_name", "read_all", "referenced", "service_objects", "setter_for", "substitute", "watch_rules",
           "watched"]


def _where(*keys: str) -> str:
    return format_path(("plugins", "dbus", *keys))


class DbusPropertiesPlugin(Plugin[DbusState]):
    name = "dbus"
    model = DbusState
    # Host-wide identity (hostname, time zone, locale) before the units that may read it.
    order = 30

    def dump(self, state: DbusState) -> dict[str, Any]:
        out: dict[str, Any] = {s: objects for s, objects in state.services.items()}
        if state.setters:
            out["setters"] = {i: {p: s.model_dump(mode="json", exclude_none=True) for p, s in props.items()}
                              for i, props in state.setters.items()}
        return out

    # -- reading -------------------------------------------------------------------------------------

    async def query(self, ctx: Context, scope: DbusState | None = None) -> DbusState:
        return await query.query(ctx, scope)

    # -- watching ------------------------------------------------------------------------------------

    async def watch(self, scope: DbusState, ctx: Context) -> AsyncIterator[WatchEvent]:
        async for event in watcher.watch(scope, ctx):
            yield event

    # -- checking ------------------------------------------------------------------------------------

    async def check(self, desired: DbusState, ctx: Context) -> list[Problem]:
        problems: list[Problem] = []
        for service, objects in desired.services.items():
            for path, interfaces in objects.items():
                try:
                    info = await introspect(ctx, service, path)
                except ServiceUnavailable:
                    problems.append(Problem(_where(service), "no such service on the bus (not running and not "
                                                             "bus-activatable)"))
                    break
                except BackendError as e:
                    problems.append(Problem(_where(service, path), f"cannot introspect the object: {e.message}"))
                    continue
                for interface, props in interfaces.items():
                    iface = info.interfaces.get(interface)
                    if iface is None:
                        have = ", ".join(sorted(info.interfaces)) or "none"
                        problems.append(Problem(_where(service, path, interface),
                                                f"the object has no such interface (it has: {have})"))
                        continue
                    for prop, value in props.items():
                        problems += self._check_property(desired, service, path, iface, prop, value)
        return problems

    def _check_property(self, desired: DbusState, service: str, path: str, iface: InterfaceInfo, prop: str,
                        value: Any) -> list[Problem]:
        where = _where(service, path, iface.name, prop)
        info = iface.properties.get(prop)
        if info is None:
            return [Problem(where, f"{iface.name} has no property {prop!r} "
                                   f"(it has: {', '.join(sorted(iface.properties)) or 'none'})")]
        problems = [Problem(where + sub, f"{msg} (the property's type is {info.signature})")
                    for sub, msg in _mismatches(info.signature, value)]
        if not info.readable:
            problems.append(Problem(where, "the property is write-only: op-dbus could not verify it"))
        spec = setter_for(desired.setters, iface.name, prop)
        if spec is None and not info.writable:
            problems.append(Problem(where, f"the property is read-only and no setter method is known for it; name "
                                           f'one under plugins.dbus.setters["{iface.name}"]["{prop}"]'))
        elif spec is not None and (spec.interface is None or spec.interface == iface.name):
            problems += self._check_setter(spec, iface, where)
        return problems

    def _check_setter(self, spec: Setter, iface: InterfaceInfo, where: str) -> list[Problem]:
        method = iface.methods.get(spec.method)
        if method is None:
            return [Problem(where, f"setter {spec.method!r} is not a method of {iface.name}")]
        args = spec.args or []
        missing = [r for r in referenced(args) if r not in iface.properties]
        if missing:
            return [Problem(where, f"setter {spec.method} refers to unknown properties: {', '.join(missing)}")]
        types = argument_signatures(method.in_signature)
        if len(types) != len(args):
            return [Problem(where, f"setter {spec.method} takes {len(types)} argument(s) ({method.in_signature}), "
                                   f"the setter names {len(args)}")]
        problems = []
        for i, (t, a) in enumerate(zip(types, args, strict=True)):
            refs = referenced([a])
            if refs:
                ref_sig = iface.properties[refs[0]].signature
                if ref_sig != t:
                    problems.append(Problem(where, f"setter {spec.method} argument {i} is {t}, but "
                                                   f"{refs[0]} is {ref_sig}"))
            else:
                problems += [Problem(where, f"setter {spec.method} argument {i}{sub}: {msg}")
                             for sub, msg in _mismatches(t, substitute([a], {})[0])]
        return problems

    # -- planning ------------------------------------------------------------------------------------

    def diff(self, desired: DbusState, current: DbusState) -> list[Change]:
        return compute_diff(desired, current)

    # -- applying ------------------------------------------------------------------------------------

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        await applier.apply(changes, ctx, undo)


def _mismatches(signature: str, value: Any) -> list[tuple[str, str]]:
    try:
        from_json(signature, value)
    except SignatureMismatch as e:
        return e.errors
    except ValueError as e:
        return [("", str(e))]
    return []
