"""The `storage` plugin: filesystems on block devices, their mounts and fstab entries, through UDisks2.

State section::

    "storage": {
      "filesystems": {
        "/dev/vdb": {"type": "ext4", "label": "data", "mount_point": "/srv/data", "options": "noatime",
                     "mounted": true},
        "/dev/disk/by-label/scratch": {"mounted": false, "fstab": false},
        "/dev/vdc": {"type": "xfs", "allow_format": true}
      }
    }

Semantics:
- A device is named by its node or one of its udev symlinks (/dev/disk/by-uuid/..., by-label, by-id).
- `type`: the filesystem the device must hold. An empty device (no signature UDisks2 recognises, no partition
  table) is formatted with `Block.Format`. A device holding anything else (another filesystem, an encrypted
  volume, a RAID member, a partition table) is never formatted unless `allow_format: true` is set on it: the
  refusal is an error (exit 2) naming the device and what it holds, and nothing changes. Formatting cannot be
  undone: a later failure rolls back the other steps and reports the format as irreversible.
- `mount_point` (with `options`, default `defaults`) is kept as the device's fstab entry
  (`Block.AddConfigurationItem` / `UpdateConfigurationItem`), written with the device as declared, so the mount
  is persistent; `fstab: false` removes the device's entry (`RemoveConfigurationItem`).
- `mounted: true/false` mounts (`Filesystem.Mount`: at the fstab entry's place, or UDisks2's own place under
  /media when the device has none, with `options`) or unmounts (`Filesystem.Unmount`). Left out, a mounted
  device stays mounted (it is remounted when its entry changes) and an unmounted one stays unmounted.
- `check` refuses a device UDisks2 does not know, a format over data, and (when op-dbus runs on the machine it
  manages) a mount point that exists but is not a directory.

Read-only facts (drives with vendor, model, serial, size and SMART data where the drive reports it; block
devices with size, what they hold, label, UUID, mount points and loop backing file) are reported under `status`
by `op-dbus query` only; `status` in a state file is ignored. `op-dbus introspect` writes every device holding a
filesystem or having an fstab entry, which re-applies as a no-op; it asks UDisks2 only when it runs (never starts
it through bus activation).

Watching (the agent): UDisks2's InterfacesAdded/InterfacesRemoved and PropertiesChanged of MountPoints, the
filesystem signature and the fstab configuration, mapped to the declared devices.
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from op_dbus.backends import dbus
from op_dbus.backends import udisks2 as u
from op_dbus.errors import BackendError, Problem, ServiceUnavailable
from op_dbus.plugin import Change, Context, Plugin, UndoLog, WatchEvent
from op_dbus.state import format_path

from . import probe
from . import watch as watcher
from .apply import apply_change
from .diff import describe, refusal
from .diff import diff as compute_diff
from .model import StorageState
from .query import build_state, fact, find_block, status, usage_of

__all__ = ["StoragePlugin", "StorageState"]


def _unavailable(exc: ServiceUnavailable) -> ServiceUnavailable:
    return ServiceUnavailable(f"storage: UDisks2 is not available: {exc.message}", hint=u.START_HINT)


class StoragePlugin(Plugin[StorageState]):
    name: ClassVar[str] = "storage"
    model: ClassVar[type[StorageState]] = StorageState
    # after the network, before the units that use the mounted filesystems
    order: ClassVar[int] = 15

    async def _objects(self, ctx: Context) -> dict[str, dict[str, dict[str, Any]]]:
        try:
            return await u.UDisks2(await dbus.system_client(ctx)).objects()
        except ServiceUnavailable as exc:
            raise _unavailable(exc) from None

    async def check(self, desired: StorageState, ctx: Context) -> list[Problem]:
        if not desired.filesystems:
            return []
        objects = await self._objects(ctx)
        local = dbus.system_bus_address(ctx.settings.bus_address) == dbus.DEFAULT_SYSTEM_BUS
        problems = []
        for device, want in desired.filesystems.items():
            where = format_path(["plugins", "storage", "filesystems", device])
            path = find_block(objects, device)
            if path is None:
                problems.append(Problem(where, f"device {device} does not exist (UDisks2 knows no block device "
                                               "by that name)"))
                continue
            ifaces = objects[path]
            have = ifaces[u.BLOCK].get("IdType") or None
            if want.type is not None and want.type != have and not want.allow_format:
                if usage_of(ifaces):
                    problems.append(Problem(where, refusal(device, describe(fact(ifaces)), want.type)))
                elif local and (found := probe.signature(device)) is not None:
                    problems.append(Problem(where, refusal(device, f"{found} by its on-disk signature (UDisks2 "
                                                                   "reports it empty: is udev running?)", want.type)))
            if want.mount_point is not None and local:
                # only where op-dbus sees the managed machine's files: another machine's path means nothing here
                try:
                    st = os.stat(want.mount_point)
                except FileNotFoundError:
                    st = None
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    problems.append(Problem(where + ".mount_point",
                                            f"mount point {want.mount_point} exists and is not a directory"))
        return problems

    async def query(self, ctx: Context, scope: StorageState | None = None) -> StorageState:
        if scope is None:
            try:
                # a read of everything must not start UDisks2 (it is bus-activated): only one that runs is asked
                client = await dbus.system_client(ctx)
                (running,) = await client.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                               "NameHasOwner", "s", [u.UDISKS2])
                objects = await self._objects(ctx) if running else {}
            except BackendError:
                # no bus or no UDisks2 here, or not allowed to ask: nothing to write down, and not a failure
                return StorageState.model_construct(filesystems={}, status=None)
            state = build_state(objects, None)
            if ctx.settings.read_only_facts:
                state.status = status(objects)
            return state
        if not scope.filesystems:
            return StorageState.model_construct(filesystems={}, status=None)
        return build_state(await self._objects(ctx), scope)

    def diff(self, desired: StorageState, current: StorageState) -> list[Change]:
        return compute_diff(desired, current)

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        disks = u.UDisks2(await dbus.system_client(ctx))
        for change in changes:
            await apply_change(disks, change, undo, ctx.settings.job_timeout)

    def dump(self, state: StorageState) -> dict[str, Any]:
        out: dict[str, Any] = {"filesystems": {d: f.model_dump(mode="json", exclude_none=True)
                                               for d, f in state.filesystems.items()}}
        if state.status is not None:
            out["status"] = state.status.model_dump(mode="json")
        return out

    async def watch(self, scope: StorageState, ctx: Context) -> AsyncIterator[WatchEvent]:
        if not scope.filesystems:
            return
        try:
            async for event in watcher.watch(await dbus.system_client(ctx), scope):
                yield event
        except ServiceUnavailable as exc:
            raise _unavailable(exc) from None
