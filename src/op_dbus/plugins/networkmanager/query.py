"""Read NetworkManager's profiles, their secrets and which of them are active, as the section's model."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from op_dbus.backends import dbus
from op_dbus.backends.dbus_types import to_json
from op_dbus.errors import BackendError, ServiceUnavailable

from . import codec
from .model import TYPES, NetworkManagerSection, Profile

NM = "org.freedesktop.NetworkManager"
NM_PATH = "/org/freedesktop/NetworkManager"
SETTINGS_PATH = "/org/freedesktop/NetworkManager/Settings"
SETTINGS = "org.freedesktop.NetworkManager.Settings"
CONNECTION = "org.freedesktop.NetworkManager.Settings.Connection"
ACTIVE = "org.freedesktop.NetworkManager.Connection.Active"
DEVICE = "org.freedesktop.NetworkManager.Device"
SETTINGS_SIG = "a{sa{sv}}"

# Settings.Connection Flags: profiles NetworkManager made up itself (external, generated, in memory only).
FLAG_NM_GENERATED, FLAG_VOLATILE, FLAG_EXTERNAL = 0x2, 0x4, 0x8
ACTIVE_STATES = (1, 2)  # activating, activated
DEVICE_WIFI = 2

START_HINT = "start it (`systemctl start NetworkManager`) or leave the networkmanager section out"


@dataclass
class LiveProfile:
    """One profile as NetworkManager holds it: its object path, uuid, whole settings (JSON form) and secrets."""

    path: str
    uuid: str
    id: str
    settings: dict[str, Any]
    flags: int = 0
    active_path: str | None = None
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.settings.get("connection", {}).get("type", {}).get("data", ""))

    def with_secrets(self) -> dict[str, Any]:
        """The whole settings with the secrets merged in: what re-creates or restores this profile."""
        merged = {g: dict(v) for g, v in self.settings.items()}
        for group, values in self.secrets.items():
            merged[group] = merge_secrets(merged.get(group, {}), values)
        return merged


def merge_secrets(settings: dict[str, Any], secrets: dict[str, Any]) -> dict[str, Any]:
    """One group's settings with its secrets added. GetSecrets repeats the WireGuard peers with only their keys
    and preshared keys: those are merged into the full peers by public key, not put in their place."""
    out = dict(settings)
    for key, value in secrets.items():
        if key == "peers" and key in settings:
            by_key = {p["public-key"]["data"]: p for p in value["data"] if "public-key" in p}
            peers = [{**peer, **by_key.get(peer.get("public-key", {}).get("data"), {})}
                     for peer in settings[key]["data"]]
            out[key] = {"type": settings[key]["type"], "data": peers}
        else:
            out[key] = value
    return out


async def running(client: dbus.Client) -> None:
    """Raise ServiceUnavailable with what to do when NetworkManager is not on the bus."""
    # Only a running NetworkManager: reading must not start one through bus activation.
    if not await client.has_owner(NM):
        raise ServiceUnavailable("NetworkManager is not running (org.freedesktop.NetworkManager is not on the bus)",
                                 hint=START_HINT)


async def read_profiles(client: dbus.Client, ids: set[str] | None) -> dict[str, list[LiveProfile]]:
    """Profiles by id (ids are not unique in NetworkManager), only those in `ids` unless it is None."""
    await running(client)
    (paths,) = await client.call(NM, SETTINGS_PATH, SETTINGS, "ListConnections")
    active = await _active_by_uuid(client)

    async def one(path: str) -> LiveProfile | None:
        try:
            (raw,) = await client.call(NM, path, CONNECTION, "GetSettings")
            flags = await client.get_property(NM, path, CONNECTION, "Flags")
        except BackendError:
            return None  # removed between the list and the read
        settings = to_json(SETTINGS_SIG, raw)
        conn = settings.get("connection", {})
        uuid = conn.get("uuid", {}).get("data", "")
        prof = LiveProfile(path=path, uuid=uuid, id=conn.get("id", {}).get("data", ""), settings=settings,
                           flags=int(flags), active_path=active.get(uuid))
        if ids is not None and prof.id not in ids:
            return None
        for group in codec.SECRET_GROUPS:
            if group in settings or (group == "802-11-wireless-security" and "802-11-wireless" in settings):
                prof.secrets[group] = await _secrets(client, path, group)
        return prof

    found = await asyncio.gather(*(one(p) for p in paths))
    by_id: dict[str, list[LiveProfile]] = {}
    for prof in found:
        if prof is not None:
            by_id.setdefault(prof.id, []).append(prof)
    return by_id


async def _secrets(client: dbus.Client, path: str, group: str) -> dict[str, Any]:
    try:
        (raw,) = await client.call(NM, path, CONNECTION, "GetSecrets", "s", [group])
    except BackendError:
        return {}  # no secrets in this group, or an agent-owned secret NetworkManager does not hand out
    return dict(to_json(SETTINGS_SIG, raw).get(group, {}))


async def _active_by_uuid(client: dbus.Client) -> dict[str, str]:
    paths = await client.get_property(NM, NM_PATH, NM, "ActiveConnections")

    async def one(path: str) -> tuple[str, str] | None:
        try:
            props = await client.get_all(NM, path, ACTIVE)
        except BackendError:
            return None
        return (props.get("Uuid", ""), path) if props.get("State") in ACTIVE_STATES else None

    return dict(pair for pair in await asyncio.gather(*(one(p) for p in paths)) if pair is not None)


async def device_types(client: dbus.Client) -> dict[str, int]:
    """Interface name -> NetworkManager device type of every device it knows."""
    paths = await client.get_property(NM, NM_PATH, NM, "AllDevices")

    async def one(path: str) -> tuple[str, int] | None:
        try:
            props = await client.get_all(NM, path, DEVICE)
        except BackendError:
            return None
        return str(props.get("Interface", "")), int(props.get("DeviceType", 0))

    return dict(pair for pair in await asyncio.gather(*(one(p) for p in paths)) if pair is not None)


def profile_state(live: LiveProfile, want: Profile | None) -> Profile:
    """A live profile in the section's form: the groups and keys `want` declares (all known ones without it)."""
    groups: dict[str, Any] = {}
    declared = want.groups() if want is not None else None
    for group in codec.KEYS:
        if declared is not None and group not in declared:
            continue
        raw = merge_secrets(live.settings.get(group, {}), live.secrets.get(group, {}))
        if declared is None and not raw:
            continue
        names = list(declared[group]) if declared is not None else None
        values = codec.decode_group(group, raw, names)
        if declared is None:
            defaults = codec.KEYS[group]
            values = {k: v for k, v in values.items() if v is not None and (k == "type" or v != defaults[k].default)}
        groups[group] = values
    active = (live.active_path is not None) if want is None or want.active is not None else None
    return Profile.model_validate({**groups, "active": active}) if active is not None else Profile.model_validate(groups)


def build_state(live: dict[str, list[LiveProfile]], scope: NetworkManagerSection | None) -> NetworkManagerSection:
    """The section for `scope` (each declared id; a missing one as absent), or every profile a user made."""
    if scope is None:
        out = {}
        for pid, profs in sorted(live.items()):
            prof = profs[0]
            if prof.type not in TYPES or prof.flags & (FLAG_NM_GENERATED | FLAG_VOLATILE | FLAG_EXTERNAL):
                continue  # made up by NetworkManager (e.g. the loopback device's), not declarable
            out[pid] = profile_state(prof, None)
        return NetworkManagerSection(connections=out)
    connections: dict[str, Profile] = {}
    for pid, want in scope.connections.items():
        found = live.get(pid)
        connections[pid] = profile_state(found[0], want) if found else Profile.model_validate({"state": "absent"})
    return NetworkManagerSection(connections=connections)
