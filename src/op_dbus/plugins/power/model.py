"""The `power` section: the declared power profile, and UPower's facts as output only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from op_dbus.plugin import Section

PROFILES = ("performance", "balanced", "power-saver")


class PowerDevice(Section):
    """One power source UPower knows (AC adapter, battery, UPS, ...)."""

    path: str
    type: str
    native_path: str = Field("", alias="native-path")
    model: str = ""
    online: bool | None = None
    state: str = ""
    percentage: float | None = None
    time_to_empty: int | None = Field(None, alias="time-to-empty")
    time_to_full: int | None = Field(None, alias="time-to-full")


class PowerStatus(Section):
    """What UPower and power-profiles-daemon report; output of `op-dbus query` only, ignored as input."""

    on_battery: bool | None = Field(None, alias="on-battery")
    lid_present: bool | None = Field(None, alias="lid-present")
    lid_closed: bool | None = Field(None, alias="lid-closed")
    devices: list[PowerDevice] = []
    profiles: list[str] = Field([], description="the profiles this machine offers")
    upower: str = Field("", description="why UPower facts are missing, when they are")


class PowerSection(Section):
    profile: Literal["performance", "balanced", "power-saver"] | None = Field(
        None, description="power-profiles-daemon's ActiveProfile; must be one this machine offers")
    status: PowerStatus | None = Field(None, description="Output only (what `op-dbus query` reports); ignored here.")
