"""The collectors file (/etc/op-dbus/collectors) is read only when nobody else could have written it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from op_dbus.cli.collector import read_collectors
from op_dbus.files import UnsafeFile


def test_the_collectors_file_is_read(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "collectors"
    path.write_text("# fleet\nhttps://c.example/ w+1+AA  # a witness\n\n")
    os.chmod(path, 0o644)
    assert read_collectors(path) == [("https://c.example/", "w+1+AA")]
    assert read_collectors(tmp_path / "missing") == []


def test_a_collectors_file_others_can_write_is_refused(tmp_path: Path) -> None:
    # the attacker: a local user who rewrites where the host sends its checkpoints
    os.chmod(tmp_path, 0o755)
    path = tmp_path / "collectors"
    path.write_text("https://attacker.example/ w+1+AA\n")
    os.chmod(path, 0o666)
    with pytest.raises(UnsafeFile):
        read_collectors(path)
