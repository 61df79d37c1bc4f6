"""The pure diff of the `dbus` section: one `set` per declared property whose value differs, its setter in the payload."""

from __future__ import annotations

from typing import Any

from op_dbus.plugin import Change

from .model import DbusState, object_name, setter_for

PLUGIN = "dbus"


def same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def diff(desired: DbusState, current: DbusState) -> list[Change]:
    changes = []
    for service, objects in desired.services.items():
        for path, interfaces in objects.items():
            for interface, props in interfaces.items():
                have = current.services.get(service, {}).get(path, {}).get(interface, {})
                for prop, want in props.items():
                    before = have.get(prop)
                    # values are canonical JSON on both sides once check() passed: 1 == 1.0 for a "d"
                    if prop in have and same(before, want):
                        continue
                    spec = setter_for(desired.setters, interface, prop)
                    changes.append(Change(
                        PLUGIN, object_name(service, path, interface, prop), "set", {prop: before}, {prop: want},
                        payload={"service": service, "path": path, "interface": interface, "property": prop,
                                 "value": want, "setter": spec.model_dump() if spec else None},
                    ))
    return changes
