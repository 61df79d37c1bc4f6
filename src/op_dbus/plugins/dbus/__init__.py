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

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from op_dbus.backends import dbus
from op_dbus.backends.dbus_types import (
    InterfaceInfo,
    ObjectInfo,
    PropertyInfo,
    SignatureMismatch,
    argument_signatures,
    from_json,
    parse_introspection,
    to_json,
    variant,
)
from op_dbus.errors import ApplyFailed, BackendError, OpDbusError, PermissionDenied, Problem, ServiceUnavailable
from op_dbus.plugin import SUBSCRIBED, Change, Context, Plugin, UndoLog, WatchEvent
from op_dbus.state import format_path

from .diff import diff as compute_diff
from .diff import same
from .model import (
    BUS,
    INTROSPECTABLE,
    WELL_KNOWN_OBJECTS,
    WELL_KNOWN_SETTERS,
    DbusState,
    Objects,
    Setter,
    object_name,
    referenced,
    setter_for,
    substitute,
)

__all__ = [
    "WELL_KNOWN_SETTERS",
    "DbusPropertiesPlugin",
    "DbusState",
    "Setter",
    "object_name",
    "referenced",
    "setter_for",
    "substitute",
]

def _where(*keys: str) -> str:
    return format_path(("plugins", "dbus", *keys))



async def _cache(ctx: Context) -> dict[tuple[str, str], ObjectInfo]:
    async def empty() -> dict[tuple[str, str], ObjectInfo]:
        return {}

    return await ctx.resource("dbus.introspection", empty)  # type: ignore[no-any-return]


async def introspect(ctx: Context, service: str, path: str) -> ObjectInfo:
    """The object's introspection, read once per command (this also activates a bus-activatable service)."""
    cache = await _cache(ctx)
    if (service, path) not in cache:
        client = await dbus.system_client(ctx)
        (xml,) = await client.call(service, path, INTROSPECTABLE, "Introspect")
        cache[(service, path)] = parse_introspection(xml, f"{service} {path}")
    return cache[(service, path)]


async def read_all(client: dbus.Client, service: str, path: str, interface: str,
                   names: list[str] | None = None) -> dict[str, Any]:
    """Properties of one interface as canonical JSON (GetAll; per-property Get if the service fails GetAll)."""
    try:
        (props,) = await client.call(service, path, dbus.PROPERTIES, "GetAll", "s", [interface])
        variants: dict[str, Any] = props
    except (ServiceUnavailable, PermissionDenied):
        raise
    except BackendError:
        if names is None:
            raise
        variants = {}
        for name in names:
            try:
                (variants[name],) = await client.call(service, path, dbus.PROPERTIES, "Get", "ss", [interface, name])
            except (ServiceUnavailable, PermissionDenied):
                raise
            except BackendError:
                continue
    return {k: to_json(v.signature, v.value) for k, v in variants.items() if names is None or k in names}


# Calls that read or probe: not changes, so not who changed anything.
READING_CALLS = {(dbus.PROPERTIES, "Get"), (dbus.PROPERTIES, "GetAll"), (INTROSPECTABLE, "Introspect"),
                 ("org.freedesktop.DBus.Peer", "Ping"), ("org.freedesktop.DBus.Peer", "GetMachineId")}


def watched(scope: DbusState) -> dict[tuple[str, str], dict[str, set[str]]]:
    """(object path, interface) -> {service: the declared property names}."""
    out: dict[tuple[str, str], dict[str, set[str]]] = {}
    for service, objects in scope.services.items():
        for path, interfaces in objects.items():
            for interface, props in interfaces.items():
                out.setdefault((path, interface), {}).setdefault(service, set()).update(props)
    return out


def watch_rules(scope: DbusState) -> list[str]:
    """Match rules for the declared objects' PropertiesChanged and their services' owners coming and going."""
    rules = []
    for service, objects in scope.services.items():
        rules.append(f"type='signal',sender='{BUS[0]}',path='{BUS[1]}',interface='{BUS[2]}',member='NameOwnerChanged',"
                     f"arg0='{service}'")
        for path, interfaces in objects.items():
            rules += [f"type='signal',sender='{service}',path='{path}',interface='{dbus.PROPERTIES}',"
                      f"member='PropertiesChanged',arg0='{interface}'" for interface in interfaces]
    return rules


def changed_objects(targets: dict[str, set[str]], owners: dict[str, str | None], sender: str, path: str,
                    interface: str, names: set[str]) -> tuple[str, ...]:
    """The declared properties (named as in the plan) a PropertiesChanged from `sender` touches.

    `targets` is `watched(scope)[(path, interface)]`. The bus has matched the sender to a declared service; which
    one is told by the owners known here, and while an owner is not known yet every candidate counts."""
    services = [s for s in targets if owners.get(s) == sender] or sorted(targets)
    return tuple(object_name(s, path, interface, p) for s in services for p in sorted(targets[s] & names))


def service_objects(scope: DbusState, service: str) -> tuple[str, ...]:
    return tuple(object_name(service, path, interface, p) for path, interfaces in scope.services.get(service, {}).items()
                 for interface, props in interfaces.items() for p in props)


def _change_key(c: Change) -> tuple[str, str]:
    return c.payload["service"], c.payload["path"]


class DbusPropertiesPlugin(Plugin[DbusState]):
    name = "dbus"
    model = DbusState
    # Host-wide identity (hostname, time zone, locale) before the units that may read it.
    order = 30

    well_known: ClassVar[dict[str, tuple[str, str]]] = WELL_KNOWN_OBJECTS

    def dump(self, state: DbusState) -> dict[str, Any]:
        out: dict[str, Any] = {s: objects for s, objects in state.services.items()}
        if state.setters:
            out["setters"] = {i: {p: s.model_dump(mode="json", exclude_none=True) for p, s in props.items()}
                              for i, props in state.setters.items()}
        return out

    # -- reading -------------------------------------------------------------------------------------

    async def query(self, ctx: Context, scope: DbusState | None = None) -> DbusState:
        client = await dbus.system_client(ctx)
        services: dict[str, Objects] = {}
        if scope is None:
            available = await self._available(client)
            for service, (path, interface) in self.well_known.items():
                if service not in available:
                    continue
                names = sorted(WELL_KNOWN_SETTERS[interface])
                try:
                    values = await read_all(client, service, path, interface, names)
                except (ServiceUnavailable, PermissionDenied):
                    continue
                services[service] = {path: {interface: {k: values[k] for k in names if k in values}}}
            return DbusState.model_construct(services=services, setters={})
        for service, objects in scope.services.items():
            for path, interfaces in objects.items():
                for interface, props in interfaces.items():
                    try:
                        values = await read_all(client, service, path, interface, list(props))
                    except ServiceUnavailable:
                        continue
                    found = {k: values[k] for k in props if k in values}
                    services.setdefault(service, {}).setdefault(path, {})[interface] = found
        return DbusState.model_construct(services=services, setters=dict(scope.setters))

    async def _available(self, client: dbus.Client) -> set[str]:
        (names,) = await client.call(*BUS, "ListNames")
        (activatable,) = await client.call(*BUS, "ListActivatableNames")
        return set(names) | set(activatable)

    # -- watching ------------------------------------------------------------------------------------

    async def watch(self, scope: DbusState, ctx: Context) -> AsyncIterator[WatchEvent]:
        if not scope.services:
            return
        client = await dbus.system_client(ctx)
        targets = watched(scope)
        owners: dict[str, str | None] = {}

        def keys(msg: Any) -> list[str]:
            reading = (msg.interface, msg.member) in READING_CALLS
            return [msg.destination] if msg.destination in scope.services and not reading else []

        callers = dbus.Callers(client, keys)
        await callers.start(ctx.settings.bus_address,
                            [f"type='method_call',destination='{service}'" for service in scope.services])

        def accept(msg: Any) -> bool:
            if msg.member == "NameOwnerChanged":
                return msg.interface == BUS[2] and msg.body[0] in scope.services
            return msg.member == "PropertiesChanged" and (msg.path, msg.body[0]) in targets

        try:
            async for msg in client.signals(watch_rules(scope), accept, ready=True):
                if msg is None:
                    await self._learn_owners(client, scope, owners)
                    yield WatchEvent(self.name, source=SUBSCRIBED)
                    continue
                if msg.member == "NameOwnerChanged":
                    service, _old, new = msg.body
                    owners[service] = new or None
                    if not new:
                        continue  # gone: nothing to compare until it is back (and a bus-activated one comes back)
                    objects = service_objects(scope, service)
                    yield WatchEvent(self.name, objects, f"dbus {service} appeared", await callers.recent([service]))
                    continue
                interface, changed, invalidated = msg.body
                objects = changed_objects(targets[(msg.path, interface)], owners, msg.sender, msg.path, interface,
                                          set(changed) | set(invalidated))
                if objects:
                    senders = [s for s in scope.services if owners.get(s) == msg.sender] or list(scope.services)
                    who = await callers.recent(senders)
                    yield WatchEvent(self.name, objects, "dbus PropertiesChanged", who)
        finally:
            callers.close()

    async def _learn_owners(self, client: dbus.Client, scope: DbusState, owners: dict[str, str | None]) -> None:
        async def owner(service: str) -> None:
            try:
                (owners[service],) = await client.call(*BUS, "GetNameOwner", "s", [service])
            except BackendError:
                owners.setdefault(service, None)  # not running now (a bus-activatable one starts when called)

        await asyncio.gather(*(owner(s) for s in scope.services))

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
        client = await dbus.system_client(ctx)
        if changes and all(c.payload.get("undo") for c in changes):
            await self._roll_back(changes, ctx, client)
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
            await self._apply_group(ctx, client, group, undo)
            i += len(group)

    async def _apply_group(self, ctx: Context, client: dbus.Client, group: list[Change], undo: UndoLog) -> None:
        c = group[0]
        info = await introspect(ctx, c.payload["service"], c.payload["path"])
        iface = info.interfaces.get(c.payload["interface"])
        if iface is None or c.payload["property"] not in iface.properties:
            raise ApplyFailed(f"{c.object}: the service no longer has this property")
        spec = c.payload["setter"]
        if spec is None:
            await self._set(client, c, iface.properties[c.payload["property"]], undo)
        else:
            await self._call_setter(client, group, iface, spec, undo)

    async def _roll_back(self, changes: list[Change], ctx: Context, client: dbus.Client) -> None:
        """Undo steps one by one: a step whose property already has its old value is skipped (the change it
        undoes may be the one that failed), and one failure does not stop the others."""
        errors = []
        for c in changes:
            p = c.payload
            try:
                live = await read_all(client, p["service"], p["path"], p["interface"], [p["property"]])
                if p["property"] in live and same(live[p["property"]], p["value"]):
                    continue
                await self._apply_group(ctx, client, [c], UndoLog())
            except OpDbusError as e:
                errors.append(f"{c.object}: {e.message}")
        if errors:
            raise ApplyFailed("could not restore: " + "; ".join(errors))

    async def _set(self, client: dbus.Client, c: Change, prop: PropertyInfo, undo: UndoLog) -> None:
        value = _convert(prop.signature, c.payload["value"], c.object)
        self._record_undo(c, undo)
        p = c.payload
        await client.call(p["service"], p["path"], dbus.PROPERTIES, "Set", "ssv",
                          [p["interface"], p["property"], variant(prop.signature, value)])

    async def _call_setter(self, client: dbus.Client, group: list[Change], iface: InterfaceInfo,
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
            self._record_undo(c, undo)
        await client.call(p["service"], p["path"], method_iface, spec["method"], method.in_signature, body)

    def _record_undo(self, c: Change, undo: UndoLog) -> None:
        before = (c.before or {}).get(c.payload["property"])
        if before is None:
            return  # the property could not be read before: there is nothing known to go back to
        undo.record(Change(self.name, c.object, "set", c.after, c.before,
                           payload={**c.payload, "value": before, "undo": True}))


def _mismatches(signature: str, value: Any) -> list[tuple[str, str]]:
    try:
        from_json(signature, value)
    except SignatureMismatch as e:
        return e.errors
    except ValueError as e:
        return [("", str(e))]
    return []


def _convert(signature: str, value: Any, what: str) -> Any:
    try:
        return from_json(signature, value)
    except ValueError as e:
        raise ApplyFailed(f"{what}: value does not fit the D-Bus type {signature}: {e}") from None

