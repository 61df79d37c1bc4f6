"""The pure diff of the `power` section: set the active power profile when it differs."""

from __future__ import annotations

from op_dbus.plugin import Change

from .model import PowerSection


def diff(desired: PowerSection, current: PowerSection) -> list[Change]:
    if desired.profile is None or desired.profile == current.profile:
        return []
    return [Change("power", "profile", "set", before=current.profile, after=desired.profile,
                   payload={"profile": desired.profile})]
