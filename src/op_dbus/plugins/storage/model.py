"""The `storage` section's model: declared filesystems on block devices, their mounts and fstab entries."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from op_dbus.plugin import Section

# Filesystems UDisks2 can make (Block.Format) whose tools are commonly installed; others are refused by name.
FsType = Literal["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "exfat", "ntfs", "swap"]

_OPTION = re.compile(r"[A-Za-z0-9_.@:/=+-]+")


def check_device(v: str) -> str:
    if not v.startswith("/dev/") or "/../" in v or v.endswith("/..") or any(c.isspace() or c == "\0" for c in v):
        raise ValueError(f"a device is named by its path under /dev (e.g. /dev/vdb or /dev/disk/by-uuid/...), got {v!r}")
    return v


def check_mount_point(v: str) -> str:
    if not v.startswith("/") or (v != "/" and v.endswith("/")) or "/../" in v or v.endswith("/..") or "//" in v:
        raise ValueError(f"a mount point is an absolute, normalised path, got {v!r}")
    if any(c.isspace() or c in "\0\\#" for c in v):
        raise ValueError(f"a mount point cannot hold whitespace, '\\' or '#' (fstab would split it): {v!r}")
    return v


def check_options(v: str) -> str:
    parts = v.split(",")
    bad = [p for p in parts if not _OPTION.fullmatch(p)]
    if bad:
        raise ValueError(f"mount options are a comma-separated list of plain words, got {v!r} (bad: {bad[0]!r})")
    return v


Device = Annotated[str, AfterValidator(check_device)]
MountPoint = Annotated[str, AfterValidator(check_mount_point)]
Options = Annotated[str, AfterValidator(check_options)]


class Filesystem(Section):
    """One block device and the filesystem it must hold."""

    type: FsType | None = Field(None, description="The filesystem the device must hold (made with Block.Format).")
    label: str | None = Field(None, max_length=255)
    allow_format: bool | None = Field(
        None, description="Format a device that holds something else. Without it, only an empty device is formatted.")
    mount_point: MountPoint | None = Field(None, description="Where it is mounted: kept as the device's fstab entry.")
    options: Options | None = Field(None, description="Mount options (fstab `opts`); `defaults` when left out.")
    mounted: bool | None = None
    fstab: bool | None = Field(
        None, description="false: the device has no fstab entry (one found is removed); mount_point implies true.")

    @model_validator(mode="after")
    def _coherent(self) -> Filesystem:
        if self.type == "swap" and (self.mount_point or self.mounted):
            raise ValueError("swap is not mounted: leave mount_point and mounted out")
        if self.fstab is False and self.mount_point is not None:
            raise ValueError("mount_point is kept as an fstab entry: it cannot go with fstab: false")
        if self.options is not None and self.mount_point is None and not self.mounted:
            raise ValueError("options apply to a mount: set mount_point or mounted: true")
        return self


class Drive(Section):
    """What UDisks2 knows of a drive (read-only)."""

    vendor: str = ""
    model: str = ""
    serial: str = ""
    size: int = 0
    removable: bool = False
    smart: dict[str, Any] | None = None


class BlockFact(Section):
    """What UDisks2 knows of a block device (read-only)."""

    size: int = 0
    type: str = ""
    usage: str = ""
    label: str = ""
    uuid: str = ""
    mount_points: list[str] = []
    drive: str | None = None
    backing_file: str | None = None


class Status(Section):
    """UDisks2's facts; output of `op-dbus query` only, ignored when a state file carries it."""

    drives: dict[str, Drive] = {}
    blocks: dict[str, BlockFact] = {}


class StorageState(Section):
    filesystems: dict[Device, Filesystem] = {}
    # A scoped query fills `status.blocks` for the declared devices (keyed as declared): what each holds and where
    # it is mounted, which the pure diff needs to refuse a format over data and to move a mount.
    status: Status | None = Field(None, description="Output only (what `op-dbus query` reports); ignored here.")
