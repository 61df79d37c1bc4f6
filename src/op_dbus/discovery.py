"""Discovery of a whole bus: every service, its objects, interfaces and property values, by walking introspection.

The walk runs many calls at once on one connection (bounded by `concurrency`): a service's child objects are
introspected as soon as their parent's XML names them, and each interface's properties are read with one
`GetAll`. A service that refuses us or does not answer is reported with that status and the walk goes on;
one slow service never holds up the others beyond `timeout` per call.

Services that are only bus-activatable are listed but not walked unless `activate` is set: walking one starts
its daemon, which a read-only discovery should not do by surprise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from op_dbus.backends import dbus
from op_dbus.backends.dbus_types import ObjectInfo, child_path, parse_introspection, to_json
from op_dbus.errors import BackendError, OperationTimeout, PermissionDenied, ServiceUnavailable

BUS = ("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus")
INTROSPECTABLE = "org.freedesktop.DBus.Introspectable"
# Interfaces every object has; they carry no state worth listing.
STANDARD_INTERFACES = frozenset({
    "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer", "org.freedesktop.DBus.Properties",
    "org.freedesktop.DBus.ObjectManager",
})
DEFAULT_TIMEOUT = 5.0
DEFAULT_CONCURRENCY = 32
# A safety net against services that generate object paths without end.
MAX_OBJECTS_PER_SERVICE = 20000

Progress = Callable[["Discovery"], None]


@dataclass(repr=False)  # a full repr of thousands of properties is costly when asyncio formats a task
class ServiceReport:
    name: str
    status: str = "ok"  # ok | partial | denied | timeout | error | activatable (not walked)
    owner: str | None = None
    pid: int | None = None
    uid: int | None = None
    activatable: bool = False
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    visited: int = 0
    errors: list[str] = field(default_factory=list)
    done: bool = False

    def __repr__(self) -> str:
        return f"ServiceReport({self.name!r}, status={self.status!r}, objects={len(self.objects)})"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "activatable": self.activatable}
        for key in ("owner", "pid", "uid"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["objects"] = dict(sorted(self.objects.items()))
        if self.errors:
            out["errors"] = self.errors
        return out


@dataclass(repr=False)
class Discovery:
    """The result, filled in while the walk runs (so a progress display can read it)."""

    services: dict[str, ServiceReport] = field(default_factory=dict)
    objects: int = 0
    interfaces: int = 0
    properties: int = 0
    calls: int = 0
    seconds: float = 0.0

    def __repr__(self) -> str:
        return f"Discovery(services={len(self.services)}, objects={self.objects})"

    @property
    def services_done(self) -> int:
        return sum(1 for s in self.services.values() if s.done)

    def to_dict(self) -> dict[str, Any]:
        return {
            "services": {n: s.to_dict() for n, s in sorted(self.services.items())},
            "summary": {"services": len(self.services), "objects": self.objects, "interfaces": self.interfaces,
                        "properties": self.properties, "calls": self.calls, "seconds": round(self.seconds, 3),
                        "by_status": _count(s.status for s in self.services.values())},
        }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


class _Walker:
    def __init__(self, client: dbus.Client, result: Discovery, *, timeout: float, concurrency: int,
                 progress: Progress | None) -> None:
        self.client = client
        self.result = result
        self.timeout = timeout
        self.limit = asyncio.Semaphore(concurrency)
        self.progress = progress

    async def call(self, *args: Any) -> list[Any]:
        async with self.limit:
            self.result.calls += 1
            return await self.client.call(*args, timeout=self.timeout)

    def tick(self) -> None:
        if self.progress is not None:
            self.progress(self.result)

    async def service(self, report: ServiceReport) -> None:
        try:
            await self._identify(report)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.object(report, "/", tasks, root=True))
        finally:
            report.done = True
            self.tick()

    async def _identify(self, report: ServiceReport) -> None:
        for member, attr in (("GetNameOwner", "owner"), ("GetConnectionUnixProcessID", "pid"),
                             ("GetConnectionUnixUser", "uid")):
            try:
                (value,) = await self.call(*BUS, member, "s", [report.name])
                setattr(report, attr, value)
            except BackendError:
                continue

    async def object(self, report: ServiceReport, path: str, tasks: asyncio.TaskGroup, *, root: bool = False) -> None:
        if report.visited >= MAX_OBJECTS_PER_SERVICE:
            if "object limit" not in " ".join(report.errors):
                report.errors.append(f"stopped after {MAX_OBJECTS_PER_SERVICE} objects (object limit)")
            return
        report.visited += 1
        try:
            (xml,) = await self.call(report.name, path, INTROSPECTABLE, "Introspect")
            info = parse_introspection(xml, f"{report.name} {path}")
        except BackendError as e:
            self._failed(report, path, e, root)
            return
        self.result.objects += 1
        for child in info.children:
            tasks.create_task(self.object(report, child_path(path, child), tasks))
        interfaces = [i for i in info.interfaces if i not in STANDARD_INTERFACES]
        if interfaces:
            report.objects[path] = {}
            await asyncio.gather(*(self.interface(report, path, info, name) for name in interfaces))
        self.tick()

    async def interface(self, report: ServiceReport, path: str, info: ObjectInfo, name: str) -> None:
        self.result.interfaces += 1
        iface = info.interfaces[name]
        entry: dict[str, Any] = {}
        report.objects[path][name] = entry
        readable = [p for p in iface.properties.values() if p.readable]
        values: dict[str, Any] = {}
        if readable:
            try:
                (props,) = await self.call(report.name, path, dbus.PROPERTIES, "GetAll", "s", [name])
                values = {k: to_json(v.signature, v.value) for k, v in props.items()}
            except BackendError as e:
                report.errors.append(f"{path} {name}: GetAll failed: {e.message}")
                if report.status == "ok":
                    report.status = "partial"
        for prop in iface.properties.values():
            item: dict[str, Any] = {"type": prop.signature, "access": prop.access}
            if prop.name in values:
                item["value"] = values[prop.name]
            entry[prop.name] = item
            self.result.properties += 1

    def _failed(self, report: ServiceReport, path: str, error: BackendError, root: bool) -> None:
        kind = ("denied" if isinstance(error, PermissionDenied) else
                "timeout" if isinstance(error, OperationTimeout) else "error")
        if root:
            report.status = kind
            report.errors.append(error.message)
        else:
            report.errors.append(f"{path}: {error.message}")
            if report.status == "ok":
                report.status = "partial"


async def discover(client: dbus.Client, *, activate: bool = False, timeout: float = DEFAULT_TIMEOUT,
                   concurrency: int = DEFAULT_CONCURRENCY, progress: Progress | None = None) -> Discovery:
    """Walk every well-known name on the bus (and, with `activate`, the activatable ones too)."""
    started = time.perf_counter()
    result = Discovery()
    (names,) = await client.call(*BUS, "ListNames", timeout=timeout)
    try:
        (activatable,) = await client.call(*BUS, "ListActivatableNames", timeout=timeout)
    except (PermissionDenied, ServiceUnavailable):
        activatable = []
    running = {n for n in names if not n.startswith(":")}
    for name in sorted(running | set(activatable)):
        report = ServiceReport(name, activatable=name in activatable)
        if name == "org.freedesktop.DBus":
            report.status, report.done = "ok", True  # the bus itself: its interface is the protocol, not state
        elif name not in running and not activate:
            report.status, report.done = "activatable", True
        result.services[name] = report
    walker = _Walker(client, result, timeout=timeout, concurrency=concurrency, progress=progress)
    walker.tick()
    await asyncio.gather(*(walker.service(r) for r in result.services.values() if not r.done))
    result.seconds = time.perf_counter() - started
    return result


async def discover_bus(address: str | None, *, activate: bool = False, timeout: float = DEFAULT_TIMEOUT,
                       concurrency: int = DEFAULT_CONCURRENCY, progress: Progress | None = None) -> Discovery:
    """`discover` on a connection of its own to the bus at `address` (None: the system bus), closed after."""
    client = dbus.Client(await dbus.connect(address), timeout=timeout)
    try:
        return await discover(client, activate=activate, timeout=timeout, concurrency=concurrency, progress=progress)
    finally:
        client.bus.disconnect()
