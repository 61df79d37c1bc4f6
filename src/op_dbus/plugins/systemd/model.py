"""The `systemd` section's model, systemd's vocabulary (states, methods, action order) and what it says of a unit."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, model_validator

from op_dbus.plugin import Section

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
UNIT = "org.freedesktop.systemd1.Unit"

UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap", "timer", "path", "slice", "scope")
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.\\@-]{1,250}\.(" + "|".join(UNIT_TYPES) + r")")
# Types `introspect` writes out: the ones a sysadmin declares. Devices, scopes, slices and mounts are
# created by the system itself and would only add noise that goes stale.
INTROSPECT_TYPES = ("service", "socket", "timer", "path")


def _unit_name(name: str) -> str:
    if not _UNIT_NAME.fullmatch(name):
        raise ValueError(f"not a unit name: {name!r} (expected NAME.TYPE, TYPE one of {', '.join(UNIT_TYPES)})")
    return name


UnitName = Annotated[str, AfterValidator(_unit_name)]


class UnitState(Section):
    active_state: Literal["active", "inactive"] | None = None
    enabled: bool | None = None
    masked: bool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> UnitState:
        if self.masked and self.active_state == "active":
            raise ValueError("a masked unit cannot be active")
        if self.masked and self.enabled:
            raise ValueError("a masked unit cannot be enabled")
        return self


class SystemdState(Section):
    units: dict[UnitName, UnitState] = {}


def normalise_active(active_state: str) -> Literal["active", "inactive"]:
    """systemd's ActiveState folded to the two declarable values: up (or coming up) vs not running."""
    return "active" if active_state in ("active", "reloading", "activating", "refreshing") else "inactive"


ENABLED_STATES = {"enabled": True, "enabled-runtime": True, "disabled": False}
MASKED_STATES = ("masked", "masked-runtime")
NOT_ENABLEABLE = ("static", "indirect", "generated", "transient", "alias", "linked", "linked-runtime", "bad")

# How long a unit started by an apply must stay active, counted from the end of its start job, before the
# result counts: a Type=simple/exec/idle service is "active" as soon as its process is forked or exec'd,
# so a crash at start-up shows only later. Other types (oneshot, forking, notify, dbus, and units that are
# not services) are active only once they said they are ready: no window.
START_SETTLE = 0.3
PREMATURE_ACTIVE_TYPES = frozenset({"simple", "exec", "idle"})
SERVICE = "org.freedesktop.systemd1.Service"

# Inverse of each action, used to record undo before the action runs.
INVERSE = {"start": "stop", "stop": "start", "enable": "disable", "disable": "enable", "mask": "unmask", "unmask": "mask"}
# Order of actions in a plan: unit files first (unmask before enable), stops before starts so a
# replacement can take over a port, masking after the stop it needs.
ACTION_ORDER = {"unmask": 0, "enable": 1, "disable": 2, "stop": 3, "mask": 4, "start": 5}
# ActiveState values with no job under way; the others are transitions whose end is signalled again.
SETTLED_STATES = ("active", "inactive", "failed")
# Manager methods whose first argument names the units a caller changes (start, stop, enable, ...).
CHANGING_METHODS = frozenset({
    "StartUnit", "StopUnit", "RestartUnit", "ReloadUnit", "TryRestartUnit", "ReloadOrRestartUnit",
    "ReloadOrTryRestartUnit", "KillUnit", "StartUnitReplace", "EnableUnitFiles", "DisableUnitFiles",
    "EnableUnitFilesWithFlags", "DisableUnitFilesWithFlags", "DisableUnitFilesWithFlagsAndInstallInfo",
    "ReenableUnitFiles", "MaskUnitFiles", "UnmaskUnitFiles", "LinkUnitFiles", "PresetUnitFiles",
})
FILE_METHODS: dict[str, tuple[str, str, Callable[[list[str]], list[Any]]]] = {
    "enable": ("EnableUnitFiles", "asbb", lambda files: [files, False, True]),
    "disable": ("DisableUnitFiles", "asb", lambda files: [files, False]),
    "mask": ("MaskUnitFiles", "asbb", lambda files: [files, False, True]),
    "unmask": ("UnmaskUnitFiles", "asb", lambda files: [files, False]),
}


class UnitInfo:
    """What systemd says about one unit name (an alias resolves to its unit's own id)."""

    __slots__ = ("active", "file_state", "id", "load_error", "load_state", "name")

    def __init__(self, name: str, uid: str, load_state: str, active: str, file_state: str) -> None:
        self.name, self.id, self.load_state, self.active, self.file_state = name, uid, load_state, active, file_state
        self.load_error = ""

    @property
    def masked(self) -> bool:
        return self.load_state == "masked" or self.file_state in MASKED_STATES

    @property
    def exists(self) -> bool:
        return self.load_state != "not-found"

