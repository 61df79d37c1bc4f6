"""Read units from systemd: one ListUnitsByNames for the declared names, or every unit file for introspection."""

from __future__ import annotations

import asyncio

from op_dbus.backends import dbus
from op_dbus.errors import ApplyFailed

from .model import (
    ENABLED_STATES,
    INTROSPECT_TYPES,
    MANAGER,
    MANAGER_PATH,
    MASKED_STATES,
    SYSTEMD,
    UNIT,
    SystemdState,
    UnitInfo,
    UnitState,
    normalise_active,
)


async def _empty() -> str:
    return ""


async def inspect(client: dbus.Client, names: list[str], *, file_state: bool = True) -> dict[str, UnitInfo]:
    """One ListUnitsByNames call for all names, then (if asked) each unit's cached UnitFileState.

    The unit object's UnitFileState property is cached by systemd; ListUnitFilesByPatterns and
    GetUnitFileState rescan the unit directories for every name, which costs milliseconds per unit.
    """
    if not names:
        return {}
    (rows,) = await client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnitsByNames", "as", [names])
    if len(rows) != len(names):
        raise ApplyFailed(f"systemd answered ListUnitsByNames with {len(rows)} units for {len(names)} names")
    states = [""] * len(rows)
    if file_state:
        states = await asyncio.gather(*(
            client.get_property(SYSTEMD, row[6], UNIT, "UnitFileState") if row[2] != "not-found" else _empty()
            for row in rows
        ))
    # ListUnitsByNames returns one row per requested name, in order; an alias comes back under its unit's id.
    return {
        name: UnitInfo(name, row[0], row[2], row[3], state)
        for name, row, state in zip(names, rows, states, strict=True)
    }


async def query(client: dbus.Client, scope: SystemdState | None = None) -> SystemdState:
    if scope is not None:
        infos = await inspect(client, list(scope.units),
                                   file_state=any(u.enabled is not None for u in scope.units.values()))
        units = {}
        for name, want in scope.units.items():
            info = infos[name]
            if not info.exists:
                continue
            # Only the fields the scope declares: this is what verify compares and what the log snapshots.
            units[name] = UnitState.model_construct(
                active_state=normalise_active(info.active) if want.active_state is not None else None,
                enabled=ENABLED_STATES.get(info.file_state) if want.enabled is not None else None,
                masked=info.masked if want.masked is not None else None,
            )
        return SystemdState.model_construct(units=units)
    return await query_all(client)


async def query_all(client: dbus.Client) -> SystemdState:
    (loaded,), (files,) = await asyncio.gather(
        client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnits"),
        client.call(SYSTEMD, MANAGER_PATH, MANAGER, "ListUnitFiles"),
    )
    active = {row[0]: row[3] for row in loaded}
    units: dict[str, UnitState] = {}
    for path, state in files:
        name = path.rsplit("/", 1)[-1]
        kind = name.rsplit(".", 1)[-1]
        # A static unit runs when something triggers it (bus activation, a socket, a dependency), so its
        # activity is not a declaration: writing it down would race with anything that triggers it (reading
        # hostname1 starts systemd-hostnamed) and make the introspected state stale by itself.
        if kind not in INTROSPECT_TYPES or "@." in name or state in ("alias", "transient", "generated", "bad",
                                                                        "static"):
            continue
        if state in MASKED_STATES:
            units[name] = UnitState.model_construct(active_state="inactive", enabled=None, masked=True)
            continue
        units[name] = UnitState.model_construct(
            active_state=normalise_active(active.get(name, "inactive")),
            enabled=ENABLED_STATES.get(state),
            masked=None,
        )
    return SystemdState.model_construct(units=dict(sorted(units.items())))
