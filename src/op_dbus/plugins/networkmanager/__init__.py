"""The `networkmanager` plugin: NetworkManager connection profiles and their activation, over its D-Bus API.

The section::

    "networkmanager": {
      "connections": {
        "lan0": {"connection": {"type": "802-3-ethernet", "interface-name": "v0", "autoconnect": false},
                 "ipv4": {"method": "manual", "addresses": ["198.18.5.1/24"], "gateway": "198.18.5.254",
                          "dns": ["198.18.5.53"]},
                 "ipv6": {"method": "disabled"},
                 "active": true},
        "home": {"connection": {"type": "802-11-wireless"},
                 "802-11-wireless": {"ssid": "home"},
                 "802-11-wireless-security": {"key-mgmt": "wpa-psk", "psk": {"secret_file": "/etc/op-dbus/psk"}}},
        "old": {"state": "absent"}
      }
    }

Semantics:
- A profile is named by its `id` (the key). Only the named profiles are managed, and of each only the setting
  groups and keys it declares; NetworkManager keeps the rest. `connection.type` is required to create one.
- Groups are NetworkManager's (D-Bus names): connection, ipv4, ipv6, 802-3-ethernet, bridge, 802-11-wireless,
  802-11-wireless-security, vpn, wireguard; keys are listed in the JSON Schema, an unknown one is refused.
  `addresses` is the complete address list (address/prefix), `dns` the complete server list.
- Secrets (`802-11-wireless-security.psk`, `vpn.secrets`, `wireguard.private-key`) are always secret values
  (see op_dbus.secret): compared in memory with what GetSecrets returns, shown as `<secret>`, logged as HMAC.
- `active: true/false` activates or deactivates the profile (ActivateConnection/DeactivateConnection); left
  out, activation is not managed. A changed profile that is active is activated again so its settings apply.
- `check` refuses, before anything changes: an id that more than one profile carries, a new profile without
  `connection.type`, a changed `connection.type`, activation of a Wi-Fi profile without a Wi-Fi device, of a
  WireGuard profile when the kernel lacks WireGuard, of a profile bound to an interface NetworkManager does not
  know.
- An interface declared both here (`connection.interface-name`) and in the `net` section is refused by the
  engine's claims check (see `Plugin.claims`): the two would fight over the device.
- `op-dbus introspect` writes every stored profile of the types above (not the ones NetworkManager makes up
  itself, such as the loopback's) with the keys that differ from NetworkManager's defaults.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from op_dbus.backends import dbus, netlink
from op_dbus.errors import Problem, ServiceUnavailable
from op_dbus.plugin import Change, Context, Plugin, UndoLog, WatchEvent

from . import apply as applier
from .diff import diff as compute_diff
from .model import WIFI, WIREGUARD, NetworkManagerSection, Profile
from .query import DEVICE_WIFI, build_state, device_types, read_profiles

__all__ = ["NetworkManagerPlugin", "NetworkManagerSection", "Profile"]


def kernel_has_wireguard() -> bool:
    return netlink.genl_family_exists("wireguard")


class NetworkManagerPlugin(Plugin[NetworkManagerSection]):
    name = "networkmanager"
    model = NetworkManagerSection
    # After `net` (which may create the devices profiles bind to), before the units that use the network.
    order = 15

    def claims(self, desired: NetworkManagerSection) -> dict[str, str]:
        return {f"interface {p.connection.interface_name}":
                f"plugins.networkmanager.connections.{pid}: NetworkManager manages device "
                f"{p.connection.interface_name!r} through profile {pid!r}"
                for pid, p in desired.connections.items()
                if p.state == "present" and p.connection is not None and p.connection.interface_name}

    async def check(self, desired: NetworkManagerSection, ctx: Context) -> list[Problem]:
        if not desired.connections:
            return []
        client = await dbus.system_client(ctx)
        live = await read_profiles(client, set(desired.connections))
        wants_device = any(p.active and p.state == "present" for p in desired.connections.values())
        devices = await device_types(client) if wants_device else {}
        problems = []
        for pid, want in desired.connections.items():
            path = f"plugins.networkmanager.connections.{pid}"
            profs = live.get(pid, [])
            if len(profs) > 1:
                problems.append(Problem(path, f"{len(profs)} NetworkManager profiles have the id {pid!r} "
                                        f"(uuids {', '.join(p.uuid for p in profs)}); delete or rename all but one"))
                continue
            if want.state == "absent":
                continue
            ptype = want.connection.type if want.connection and want.connection.type else (
                profs[0].type if profs else None)
            declared = want.connection.type if want.connection else None
            if profs and declared and declared != profs[0].type:
                problems.append(Problem(f"{path}.connection.type",
                                        f"profile {pid!r} is a {profs[0].type} profile and NetworkManager cannot "
                                        f"change its type to {declared}; declare it `state: absent` first, or use "
                                        "another id"))
                continue
            if not profs and ptype is None:
                problems.append(Problem(f"{path}.connection.type", "a new profile needs `connection.type` "
                                        "(802-3-ethernet, bridge, 802-11-wireless, vpn or wireguard)"))
                continue
            if not want.active:
                continue
            if ptype == WIFI and DEVICE_WIFI not in devices.values():
                problems.append(Problem(f"{path}.active", f"Wi-Fi profile {pid!r} cannot be activated: "
                                        "NetworkManager has no Wi-Fi device on this machine (no radio); "
                                        "declare it without `active: true` to store it only"))
            elif ptype == WIREGUARD and not kernel_has_wireguard():
                problems.append(Problem(f"{path}.active", f"WireGuard profile {pid!r} cannot be activated: this "
                                        "kernel lacks WireGuard (no `wireguard` generic netlink family); declare "
                                        "it without `active: true` to store it only"))
            else:
                iface = want.connection.interface_name if want.connection else None
                if iface and ptype not in ("bridge", WIREGUARD) and iface not in devices:
                    problems.append(Problem(f"{path}.connection.interface-name",
                                            f"profile {pid!r} cannot be activated: NetworkManager knows no device "
                                            f"{iface!r} (known: {', '.join(sorted(devices)) or 'none'})"))
        return problems

    async def query(self, ctx: Context, scope: NetworkManagerSection | None = None) -> NetworkManagerSection:
        client = await dbus.system_client(ctx)
        ids = None if scope is None else set(scope.connections)
        if ids == set():
            return NetworkManagerSection.model_validate({})
        try:
            live = await read_profiles(client, ids)
        except ServiceUnavailable:
            if scope is not None:
                raise
            return NetworkManagerSection.model_validate({})  # introspect of a machine without NetworkManager
        return build_state(live, scope)

    def diff(self, desired: NetworkManagerSection, current: NetworkManagerSection) -> list[Change]:
        return compute_diff(desired, current)

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        await applier.run(await dbus.system_client(ctx), changes, undo)

    async def watch(self, scope: NetworkManagerSection, ctx: Context) -> AsyncIterator[WatchEvent]:
        """NewConnection/ConnectionRemoved/Updated and ActiveConnections changes (see `watch.py`)."""
        from .watch import watch

        if not scope.connections:
            return
        # A connection of its own: a watch outlives the command's shared one.
        client = await dbus.open_client(ctx.settings.bus_address, ctx.settings.job_timeout)
        try:
            async for event in watch(client, self.name):
                yield event
        finally:
            dbus.close_client(client)

