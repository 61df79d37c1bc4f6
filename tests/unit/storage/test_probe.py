"""The on-disk signature check that guards a format when UDisks2 reports a device empty."""

from __future__ import annotations

from pathlib import Path

import pytest

from op_dbus.plugins.storage.probe import SIGNATURES, SPAN, signature


@pytest.mark.parametrize(("offset", "magic", "what"), SIGNATURES, ids=[w for _, _, w in SIGNATURES])
def test_each_signature_is_recognised(tmp_path: Path, offset: int, magic: bytes, what: str) -> None:
    image = bytearray(SPAN + 4096)
    image[offset:offset + len(magic)] = magic
    (tmp_path / "disk").write_bytes(bytes(image))
    assert signature(str(tmp_path / "disk")) == what


def test_zeroes_and_missing_devices_hold_nothing(tmp_path: Path) -> None:
    (tmp_path / "zero").write_bytes(bytes(SPAN + 4096))
    assert signature(str(tmp_path / "zero")) is None
    assert signature(str(tmp_path / "missing")) is None


def test_a_real_ext4_image_is_recognised(tmp_path: Path) -> None:
    import shutil
    import subprocess

    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (e2fsprogs)")
    image = tmp_path / "ext4.img"
    image.write_bytes(bytes(8 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    assert signature(str(image)) == "an ext2/3/4 filesystem"
