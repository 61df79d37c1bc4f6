"""Read D-Bus properties: introspection (cached per command), GetAll per interface, the services on the bus."""

from __future__ import annotations

from typing import Any

from op_dbus.backends import dbus
from op_dbus.backends.dbus_types import (
    ObjectInfo,
    parse_introspection,
    to_json,
)
from op_dbus.errors import BackendError, PermissionDenied, ServiceUnavailable
from op_dbus.plugin import Context

from .model import (
    BUS,
    INTROSPECTABLE,
    WELL_KNOWN_OBJECTS,
    WELL_KNOWN_SETTERS,
    DbusState,
    Objects,
)


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


async def query(ctx: Context, scope: DbusState | None = None) -> DbusState:
    client = await dbus.system_client(ctx)
    services: dict[str, Objects] = {}
    if scope is None:
        available = await services_on_bus(client)
        for service, (path, interface) in WELL_KNOWN_OBJECTS.items():
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


async def services_on_bus(client: dbus.Client) -> set[str]:
    (names,) = await client.call(*BUS, "ListNames")
    (activatable,) = await client.call(*BUS, "ListActivatableNames")
    return set(names) | set(activatable)
