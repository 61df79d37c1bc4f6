"""The pure diff of the `systemd` section: per unit mask/unmask, enable/disable, start/stop, in a safe order."""

from __future__ import annotations

from typing import Any

from op_dbus.plugin import Change

from .model import ACTION_ORDER, INVERSE, SystemdState, UnitState

PLUGIN = "systemd"


def _change(unit: str, action: str, field: str, before: Any, after: Any) -> Change:
    return Change(PLUGIN, unit, action, {field: before}, {field: after})


def diff(desired: SystemdState, current: SystemdState) -> list[Change]:
    changes = []
    for name, want in desired.units.items():
        have = current.units.get(name)
        if have is None:
            have = UnitState.model_construct(active_state="inactive", enabled=None, masked=False)
        if want.masked is not None and bool(have.masked) != want.masked:
            action = "mask" if want.masked else "unmask"
            changes.append(_change(name, action, "masked", bool(have.masked), want.masked))
        if want.enabled is not None and have.enabled != want.enabled:
            changes.append(_change(name, "enable" if want.enabled else "disable", "enabled",
                                   have.enabled, want.enabled))
        if want.active_state is not None and have.active_state != want.active_state:
            action = "start" if want.active_state == "active" else "stop"
            changes.append(_change(name, action, "active_state", have.active_state, want.active_state))
    changes.sort(key=lambda c: ACTION_ORDER[c.action])  # stable: the file's order within one action
    return changes


def inverse(change: Change) -> Change:
    return Change(change.plugin, change.object, INVERSE[change.action], change.after, change.before)
