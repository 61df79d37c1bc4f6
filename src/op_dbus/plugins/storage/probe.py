"""A second look before a format: known on-disk signatures read from the device itself, where op-dbus can read it.

UDisks2 learns what a device holds from udev's database; where that is missing or stale (no udevd, a device
written behind udev's back) it reports an empty device. Before such a device is formatted, its first sectors are
checked for the signatures below, so that data is never destroyed on UDisks2's word alone.
"""

from __future__ import annotations

import os

# (offset, magic, what it is)
SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"XFSB", "an xfs filesystem"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (510, b"\x55\xaa", "a DOS partition table or FAT boot sector"),
    (512, b"EFI PART", "a GPT partition table"),
    (1080, b"\x53\xef", "an ext2/3/4 filesystem"),
    (4086, b"SWAPSPACE2", "swap space"),
    (32769, b"CD001", "an ISO 9660 filesystem"),
    (65600, b"_BHRfS_M", "a btrfs filesystem"),
)
SPAN = max(offset + len(magic) for offset, magic, _ in SIGNATURES)


def signature(path: str) -> str | None:
    """What the device at `path` holds by its first bytes, or None (nothing known, or it cannot be read here)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        head = os.pread(fd, SPAN, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    for offset, magic, what in SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return what
    return None
