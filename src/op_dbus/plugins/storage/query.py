"""Reading UDisks2's objects into the `storage` section: declared devices, fstab entries, mounts, and facts."""

from __future__ import annotations

import os
from typing import Any

from op_dbus.backends import udisks2 as u

from .model import BlockFact, Drive, Filesystem, Status, StorageState

Objects = dict[str, dict[str, dict[str, Any]]]


def find_block(objects: Objects, device: str) -> str | None:
    """The object path of the block device named `device` (its node or one of its udev symlinks)."""
    for path, ifaces in objects.items():
        block = ifaces.get(u.BLOCK)
        if block is None:
            continue
        if u.text(block.get("Device")) == device or device in (u.text(s) for s in block.get("Symlinks", [])):
            return path
    return None


def fstab_entry(block: dict[str, Any]) -> dict[str, Any] | None:
    """The device's first fstab entry (plain fields), or None."""
    for item in block.get("Configuration", []):
        kind, fields = u.item_fields(item)
        if kind == "fstab":
            return fields
    return None


def raw_fstab_item(block: dict[str, Any]) -> list[Any] | None:
    """The device's first fstab entry as UDisks2 holds it (what Remove/UpdateConfigurationItem must be given)."""
    for item in block.get("Configuration", []):
        if item[0] == "fstab":
            return [item[0], item[1]]
    return None


def usage_of(ifaces: dict[str, dict[str, Any]]) -> str:
    """What a block holds, in UDisks2's words ("filesystem", "crypto", "raid", "other"), "partition-table", or ""."""
    if u.PARTITION_TABLE in ifaces:
        return "partition-table"
    return str(ifaces[u.BLOCK].get("IdUsage") or "")


def mounts_of(ifaces: dict[str, dict[str, Any]]) -> list[str]:
    fs = ifaces.get(u.FILESYSTEM)
    return sorted(u.text(m) for m in fs.get("MountPoints", [])) if fs else []


def fact(ifaces: dict[str, dict[str, Any]]) -> BlockFact:
    block = ifaces[u.BLOCK]
    drive = str(block.get("Drive") or "/")
    loop = ifaces.get(u.LOOP)
    kind = ifaces[u.PARTITION_TABLE].get("Type") if u.PARTITION_TABLE in ifaces else block.get("IdType")
    return BlockFact.model_construct(
        size=int(block.get("Size") or 0), type=str(kind or ""), usage=usage_of(ifaces),
        label=str(block.get("IdLabel") or ""), uuid=str(block.get("IdUUID") or ""), mount_points=mounts_of(ifaces),
        drive=os.path.basename(drive) if drive != "/" else None,
        backing_file=u.text(loop.get("BackingFile")) if loop else None)


def current(ifaces: dict[str, dict[str, Any]], want: Filesystem | None) -> Filesystem:
    """One device as the section would declare it; `want` (the scope) decides what `mounted` means."""
    block = ifaces[u.BLOCK]
    entry = fstab_entry(block)
    mounts = mounts_of(ifaces)
    point = entry["dir"] if entry else None
    # against a declared mount point, "mounted" means mounted there
    mounted = want.mount_point in mounts if want is not None and want.mount_point is not None else bool(mounts)
    return Filesystem.model_construct(
        type=block.get("IdType") or None, label=block.get("IdLabel") or None, allow_format=None,
        mount_point=point, options=entry["opts"] if entry else None,
        mounted=mounted if (u.FILESYSTEM in ifaces or want is not None) else None, fstab=entry is not None)


def build_state(objects: Objects, scope: StorageState | None) -> StorageState:
    state = StorageState.model_construct(filesystems={}, status=None)
    if scope is None:
        for _path, ifaces in sorted(objects.items()):
            block = ifaces.get(u.BLOCK)
            if block is None or (u.FILESYSTEM not in ifaces and fstab_entry(block) is None):
                continue
            fs = current(ifaces, None)
            if not fs.fstab:
                fs.fstab = None  # leave the default out, so the dump reads as the user would write it
            state.filesystems[u.text(block.get("Device"))] = fs
        return state
    seen = Status.model_construct(drives={}, blocks={})
    for device, want in scope.filesystems.items():
        path = find_block(objects, device)
        if path is None:
            continue  # check() and diff() name a device that does not exist
        state.filesystems[device] = current(ifaces := objects[path], want)
        seen.blocks[device] = fact(ifaces)
    state.status = seen
    return state


def status(objects: Objects) -> Status:
    drives: dict[str, Drive] = {}
    blocks: dict[str, BlockFact] = {}
    for path, ifaces in sorted(objects.items()):
        if u.DRIVE in ifaces:
            d = ifaces[u.DRIVE]
            smart = None
            ata = ifaces.get(u.ATA)
            if ata and ata.get("SmartSupported"):
                smart = {"enabled": bool(ata.get("SmartEnabled")), "failing": bool(ata.get("SmartFailing")),
                         "temperature_kelvin": float(ata.get("SmartTemperature") or 0),
                         "power_on_seconds": int(ata.get("SmartPowerOnSeconds") or 0),
                         "bad_sectors": int(ata.get("SmartNumBadSectors") or 0)}
            drives[os.path.basename(path)] = Drive.model_construct(
                vendor=str(d.get("Vendor") or ""), model=str(d.get("Model") or ""), serial=str(d.get("Serial") or ""),
                size=int(d.get("Size") or 0), removable=bool(d.get("Removable")), smart=smart)
        block = ifaces.get(u.BLOCK)
        if block is not None and int(block.get("Size") or 0) > 0:
            blocks[u.text(block.get("Device"))] = fact(ifaces)
    return Status.model_construct(drives=drives, blocks=blocks)
