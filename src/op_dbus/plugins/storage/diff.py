"""The `storage` plan, pure: per device unmount, format, label, fstab entry, mount, in that order."""

from __future__ import annotations

from typing import Any

from op_dbus.errors import InvalidInput
from op_dbus.plugin import Change

from .model import BlockFact, Filesystem, StorageState

DEFAULT_OPTIONS = "defaults"


def refusal(device: str, holds: str, fstype: str | None) -> str:
    return (f"storage: refusing to format {device}: it holds {holds}; formatting it as {fstype} would destroy "
            "that data. Set allow_format: true on this device to format it anyway")


def _change(action: str, device: str, before: Any, after: Any, **payload: Any) -> Change:
    return Change("storage", device, action, before, after, payload)


def fstab_fields(device: str, want: Filesystem, have: Filesystem, opts: str) -> dict[str, Any]:
    """The fstab entry a declared mount point makes: the device as declared, so a path by UUID stays one."""
    return {"fsname": device, "dir": want.mount_point, "type": want.type or have.type or "auto",
            "opts": opts, "freq": 0, "passno": 0}


def describe(fact: BlockFact) -> str:
    """What a device holds, for a refusal: "an ext4 filesystem (label 'data', UUID '...')"."""
    noun = {"filesystem": "filesystem", "crypto": "encrypted volume", "raid": "RAID member",
            "partition-table": "partition table"}.get(fact.usage, "signature")
    what = fact.type or "unknown"
    details = [f"{k} {v!r}" for k, v in (("label", fact.label), ("UUID", fact.uuid)) if v]
    return f"a{'n' if what[:1] in 'aeiou' else ''} {what} {noun}" + (f" ({', '.join(details)})" if details else "")


def diff_device(device: str, want: Filesystem, have: Filesystem, fact: BlockFact) -> list[Change]:
    changes: list[Change] = []
    mounts = list(fact.mount_points)
    fmt = want.type is not None and want.type != have.type
    if fmt and fact.usage and not want.allow_format:
        raise InvalidInput(refusal(device, describe(fact), want.type))
    fstab_change: str | None = None
    opts = DEFAULT_OPTIONS
    if want.mount_point is not None:
        # options left out keep the entry's own (a new entry gets `defaults`)
        opts = want.options or (have.options if have.mount_point is not None else None) or DEFAULT_OPTIONS
        if have.mount_point is None:
            fstab_change = "add-fstab"
        elif (have.mount_point, have.options) != (want.mount_point, opts) or (fmt and have.type != want.type):
            fstab_change = "update-fstab"
    elif want.fstab is False and have.fstab:
        fstab_change = "remove-fstab"
    final_mounted = want.mounted if want.mounted is not None else bool(mounts)
    # a device is unmounted before it is formatted, before its mount moves, and when it must not be mounted
    elsewhere = bool(mounts) and want.mount_point is not None and want.mount_point not in mounts
    unmount = bool(mounts) and (fmt or fstab_change is not None or elsewhere or not final_mounted)
    if unmount:
        changes.append(_change("unmount", device, {"mounted": True, "at": mounts}, {"mounted": False}))
    if fmt:
        changes.append(_change("format", device, {"type": have.type, "label": have.label},
                               {"type": want.type, "label": want.label, "reversible": False},
                               type=want.type, label=want.label))
    elif want.label is not None and want.label != have.label and have.type is not None:
        changes.append(_change("set-label", device, {"label": have.label}, {"label": want.label}, label=want.label,
                               old=have.label or ""))
    if fstab_change == "remove-fstab":
        changes.append(_change("remove-fstab", device, {"mount_point": have.mount_point, "options": have.options},
                               None))
    elif fstab_change is not None:
        changes.append(_change(fstab_change, device, {"mount_point": have.mount_point, "options": have.options},
                               {"mount_point": want.mount_point, "options": opts},
                               fields=fstab_fields(device, want, have, opts)))
    if final_mounted and (unmount or not mounts or elsewhere):
        where = want.mount_point
        changes.append(_change("mount", device, {"mounted": False}, {"mounted": True, "at": where},
                               options=None if where is not None or have.mount_point else want.options))
    return changes


def diff(desired: StorageState, current: StorageState) -> list[Change]:
    changes: list[Change] = []
    for device, want in desired.filesystems.items():
        have = current.filesystems.get(device)
        if have is None:
            raise InvalidInput(f"storage: device {device} does not exist (UDisks2 knows no block device by that name)")
        fact = current.status.blocks.get(device) if current.status is not None else None
        changes += diff_device(device, want, have, fact or BlockFact())
    return changes
