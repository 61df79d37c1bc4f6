"""Read the active and available power profiles (power-profiles-daemon) and UPower's power sources."""

from __future__ import annotations

import asyncio
from typing import Any

from op_dbus.backends import dbus
from op_dbus.errors import BackendError, ServiceUnavailable

from .model import PowerDevice, PowerStatus

# power-profiles-daemon's own name first; newer releases also own the freedesktop one.
PPD_NAMES = (("net.hadess.PowerProfiles", "/net/hadess/PowerProfiles"),
             ("org.freedesktop.UPower.PowerProfiles", "/org/freedesktop/UPower/PowerProfiles"))
UPOWER = "org.freedesktop.UPower"
UPOWER_PATH = "/org/freedesktop/UPower"
UPOWER_DEVICE = "org.freedesktop.UPower.Device"
DEVICE_TYPES = {0: "unknown", 1: "line-power", 2: "battery", 3: "ups", 4: "monitor", 5: "mouse", 6: "keyboard",
                7: "pda", 8: "phone"}
DEVICE_STATES = {0: "unknown", 1: "charging", 2: "discharging", 3: "empty", 4: "fully-charged",
                 5: "pending-charge", 6: "pending-discharge"}
PPD_HINT = "start power-profiles-daemon (`systemctl start power-profiles-daemon`) or leave `profile` out"


async def ppd(client: dbus.Client) -> tuple[str, str]:
    """(bus name, object path) of the running power-profiles-daemon; ServiceUnavailable saying what to do."""
    # Only a running daemon: reading must not start one through bus activation.
    for name, path in PPD_NAMES:
        if await client.has_owner(name):
            return name, path
    raise ServiceUnavailable("power-profiles-daemon is not running (neither net.hadess.PowerProfiles nor "
                             "org.freedesktop.UPower.PowerProfiles is on the bus)", hint=PPD_HINT)


async def profiles(client: dbus.Client) -> tuple[str, list[str]]:
    """The active profile and the profiles this machine offers."""
    name, path = await ppd(client)
    props = await client.get_all(name, path, name)
    offered = [p["Profile"].value for p in props.get("Profiles", [])]
    return str(props.get("ActiveProfile", "")), offered


async def upower_status(client: dbus.Client) -> PowerStatus:
    if not await client.has_owner(UPOWER):
        return PowerStatus.model_validate({"upower": "UPower is not running (`systemctl start upower`)"})
    try:
        props = await client.get_all(UPOWER, UPOWER_PATH, UPOWER)
        (paths,) = await client.call(UPOWER, UPOWER_PATH, UPOWER, "EnumerateDevices")
    except BackendError:
        return PowerStatus.model_validate({"upower": "UPower is not running (`systemctl start upower`)"})

    async def one(path: str) -> PowerDevice | None:
        try:
            p: dict[str, Any] = await client.get_all(UPOWER, path, UPOWER_DEVICE)
        except BackendError:
            return None
        kind = DEVICE_TYPES.get(int(p.get("Type", 0)), "other")
        return PowerDevice.model_validate({
            "path": path, "type": kind, "native-path": p.get("NativePath", ""), "model": p.get("Model", ""),
            "online": bool(p["Online"]) if kind == "line-power" and "Online" in p else None,
            "state": DEVICE_STATES.get(int(p.get("State", 0)), "unknown") if kind != "line-power" else "",
            "percentage": float(p["Percentage"]) if kind != "line-power" and "Percentage" in p else None,
            "time-to-empty": int(p["TimeToEmpty"]) if p.get("TimeToEmpty") else None,
            "time-to-full": int(p["TimeToFull"]) if p.get("TimeToFull") else None})

    devices = [d for d in await asyncio.gather(*(one(p) for p in paths)) if d is not None]
    return PowerStatus.model_validate({"on-battery": bool(props.get("OnBattery")),
                                       "lid-present": bool(props.get("LidIsPresent")),
                                       "lid-closed": bool(props.get("LidIsClosed")), "devices": devices})
