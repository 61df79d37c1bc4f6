"""A thin client of UDisks2 (org.freedesktop.UDisks2) over the shared D-Bus client: objects, format, mount, fstab.

No policy lives here: which device to format or mount is the `storage` plugin's decision. UDisks2 speaks of
paths and fstab fields as NUL-terminated byte strings (`ay`); they are converted at this boundary.
"""

from __future__ import annotations

from typing import Any

from dbus_fast import Variant

from op_dbus.backends import dbus

UDISKS2 = "org.freedesktop.UDisks2"
ROOT = "/org/freedesktop/UDisks2"
MANAGER_PATH = "/org/freedesktop/UDisks2/Manager"
MANAGER = "org.freedesktop.UDisks2.Manager"
OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
BLOCK = "org.freedesktop.UDisks2.Block"
FILESYSTEM = "org.freedesktop.UDisks2.Filesystem"
PARTITION_TABLE = "org.freedesktop.UDisks2.PartitionTable"
DRIVE = "org.freedesktop.UDisks2.Drive"
ATA = "org.freedesktop.UDisks2.Drive.Ata"
LOOP = "org.freedesktop.UDisks2.Loop"

START_HINT = "start udisks2 (systemctl start udisks2.service; apt-get install udisks2) on the managed machine"


def text(value: Any) -> str:
    """A UDisks2 byte string (NUL-terminated `ay`) as text."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).rstrip(b"\0").decode(errors="surrogateescape")
    return str(value or "")


def raw(value: str) -> bytes:
    return value.encode(errors="surrogateescape") + b"\0"


def plain(props: dict[str, Any]) -> dict[str, Any]:
    """Properties with their variants unwrapped (GetManagedObjects nests Variant values)."""
    return {k: (v.value if isinstance(v, Variant) else v) for k, v in props.items()}


def fstab_item(fsname: str, directory: str, fstype: str, options: str, freq: int = 0, passno: int = 0) -> list[Any]:
    """A Block configuration item of type "fstab", as AddConfigurationItem takes it: (sa{sv})."""
    return ["fstab", {"fsname": Variant("ay", raw(fsname)), "dir": Variant("ay", raw(directory)),
                      "type": Variant("ay", raw(fstype)), "opts": Variant("ay", raw(options)),
                      "freq": Variant("i", freq), "passno": Variant("i", passno)}]


def item_fields(item: Any) -> tuple[str, dict[str, Any]]:
    """(kind, {field: plain value}) of a configuration item as the Block's Configuration property holds it."""
    kind, details = item[0], item[1]
    return kind, {k: (text(v) if isinstance(v, bytes | bytearray) else v) for k, v in plain(details).items()}


class UDisks2:
    """UDisks2's calls on one D-Bus connection; every object is named by its object path."""

    def __init__(self, client: dbus.Client) -> None:
        self.client = client

    async def objects(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Every UDisks2 object: path -> interface -> properties (plain values)."""
        (managed,) = await self.client.call(UDISKS2, ROOT, OBJECT_MANAGER, "GetManagedObjects")
        return {path: {iface: plain(props) for iface, props in ifaces.items()} for path, ifaces in managed.items()}

    async def version(self) -> str:
        return str(await self.client.get_property(UDISKS2, MANAGER_PATH, MANAGER, "Version"))

    async def block(self, path: str) -> dict[str, Any]:
        return await self.client.get_all(UDISKS2, path, BLOCK)

    async def format(self, path: str, fstype: str, label: str | None, timeout: float) -> None:
        options: dict[str, Variant] = {"no-block": Variant("b", False)}
        if label is not None:
            options["label"] = Variant("s", label)
        await self.client.call(UDISKS2, path, BLOCK, "Format", "sa{sv}", [fstype, options], timeout=timeout)

    async def set_label(self, path: str, label: str) -> None:
        await self.client.call(UDISKS2, path, FILESYSTEM, "SetLabel", "sa{sv}", [label, {}])

    async def mount(self, path: str, options: str | None) -> str:
        opts = {"options": Variant("s", options)} if options else {}
        (where,) = await self.client.call(UDISKS2, path, FILESYSTEM, "Mount", "a{sv}", [opts])
        return str(where)

    async def unmount(self, path: str) -> None:
        await self.client.call(UDISKS2, path, FILESYSTEM, "Unmount", "a{sv}", [{}])

    async def add_item(self, path: str, item: list[Any]) -> None:
        await self.client.call(UDISKS2, path, BLOCK, "AddConfigurationItem", "(sa{sv})a{sv}", [item, {}])

    async def remove_item(self, path: str, item: list[Any]) -> None:
        await self.client.call(UDISKS2, path, BLOCK, "RemoveConfigurationItem", "(sa{sv})a{sv}", [item, {}])

    async def update_item(self, path: str, old: list[Any], new: list[Any]) -> None:
        await self.client.call(UDISKS2, path, BLOCK, "UpdateConfigurationItem", "(sa{sv})(sa{sv})a{sv}",
                               [old, new, {}])
