"""Carrying out a `storage` plan through UDisks2, recording each step's inverse before it takes effect."""

from __future__ import annotations

from typing import Any

from op_dbus.backends import udisks2 as u
from op_dbus.errors import ApplyFailed, BackendError
from op_dbus.plugin import Change, UndoLog

from .query import find_block, fstab_entry, raw_fstab_item


def _item(fields: dict[str, Any]) -> list[Any]:
    return u.fstab_item(fields["fsname"], fields["dir"], fields["type"], fields["opts"], int(fields.get("freq", 0)),
                        int(fields.get("passno", 0)))


def _inverse(change: Change, action: str, before: Any = None, after: Any = None, **payload: Any) -> Change:
    return Change("storage", change.object, action, before if before is not None else change.after,
                  after if after is not None else change.before, payload)


async def apply_change(disks: u.UDisks2, change: Change, undo: UndoLog, timeout: float) -> None:
    device = change.object
    objects = await disks.objects()
    path = find_block(objects, device)
    if path is None:
        raise ApplyFailed(f"storage: device {device} is gone (UDisks2 no longer knows it)")
    block = objects[path][u.BLOCK]
    what = f"storage: {change.action} {device}"
    try:
        if change.action == "unmount":
            undo.record(_inverse(change, "mount", options=None))
            await disks.unmount(path)
        elif change.action == "mount":
            undo.record(_inverse(change, "unmount"))
            await disks.mount(path, change.payload.get("options"))
        elif change.action == "format":
            # the data on the device is gone once this runs: nothing can bring it back
            undo.irreversible(change)
            await disks.format(path, change.payload["type"], change.payload.get("label"), timeout)
        elif change.action == "set-label":
            undo.record(_inverse(change, "set-label", label=change.payload["old"], old=change.payload["label"]))
            await disks.set_label(path, change.payload["label"])
        elif change.action == "add-fstab":
            undo.record(_inverse(change, "remove-fstab"))
            await disks.add_item(path, _item(change.payload["fields"]))
        elif change.action in ("update-fstab", "remove-fstab"):
            old_raw, old = raw_fstab_item(block), fstab_entry(block)
            if old_raw is None or old is None:
                raise ApplyFailed(f"{what}: the device has no fstab entry any more")
            if change.action == "update-fstab":
                undo.record(_inverse(change, "update-fstab", fields=old))
                await disks.update_item(path, old_raw, _item(change.payload["fields"]))
            else:
                undo.record(_inverse(change, "add-fstab", fields=old))
                await disks.remove_item(path, old_raw)
        else:
            raise ApplyFailed(f"{what}: unknown action")
    except BackendError as exc:
        raise ApplyFailed(f"{what}: {exc.message}", hint=exc.hint) from None
