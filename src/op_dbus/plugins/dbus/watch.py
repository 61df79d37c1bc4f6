"""Change notifications for the dbus plugin: PropertiesChanged of the declared objects, owners, and who called."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from op_dbus.backends import dbus
from op_dbus.errors import BackendError
from op_dbus.plugin import SUBSCRIBED, Context, WatchEvent

from .diff import PLUGIN
from .model import (
    BUS,
    INTROSPECTABLE,
    DbusState,
    object_name,
)

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


async def watch(scope: DbusState, ctx: Context) -> AsyncIterator[WatchEvent]:
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
                await learn_owners(client, scope, owners)
                yield WatchEvent(PLUGIN, source=SUBSCRIBED)
                continue
            if msg.member == "NameOwnerChanged":
                service, _old, new = msg.body
                owners[service] = new or None
                if not new:
                    continue  # gone: nothing to compare until it is back (and a bus-activated one comes back)
                objects = service_objects(scope, service)
                yield WatchEvent(PLUGIN, objects, f"dbus {service} appeared", await callers.recent([service]))
                continue
            interface, changed, invalidated = msg.body
            assert msg.path is not None  # accept() lets through only a (path, interface) of targets
            objects = changed_objects(targets[(msg.path, interface)], owners, msg.sender, msg.path, interface,
                                      set(changed) | set(invalidated))
            if objects:
                senders = [s for s in scope.services if owners.get(s) == msg.sender] or list(scope.services)
                who = await callers.recent(senders)
                yield WatchEvent(PLUGIN, objects, "dbus PropertiesChanged", who)
    finally:
        callers.close()


async def learn_owners(client: dbus.Client, scope: DbusState, owners: dict[str, str | None]) -> None:
    async def owner(service: str) -> None:
        try:
            (owners[service],) = await client.call(*BUS, "GetNameOwner", "s", [service])
        except BackendError:
            owners.setdefault(service, None)  # not running now (a bus-activatable one starts when called)

    await asyncio.gather(*(owner(s) for s in scope.services))
