"""Fault points (OP_DBUS_FAULTS) and the pct override (OP_DBUS_PCT) are test machinery: a shipped op-dbus honours
them only with the test suite's switch on, an environment variable together with a root-owned marker file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from op_dbus import files
from op_dbus.backends.containers.proxmox import ProxmoxBackend
from tests import attacker

SRC = Path(__file__).resolve().parents[2] / "src"
SWITCH = "OP_DBUS_TESTING"
REACH_A_FAULT_POINT = "from op_dbus.engine import faults; faults.point('before-apply'); print('still alive')"


def python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in (SWITCH, "OP_DBUS_FAULTS")}
    return subprocess.run([sys.executable, "-c", code], env={**clean, "PYTHONPATH": str(SRC), **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_fault_point_is_ignored_without_the_test_switch() -> None:
    r = python(REACH_A_FAULT_POINT, {"OP_DBUS_FAULTS": "before-apply"})
    assert r.returncode == 0 and r.stdout == "still alive\n", (r.returncode, r.stderr)
    assert "OP_DBUS_FAULTS is ignored" in r.stderr


def test_a_fault_point_fires_with_the_test_switch() -> None:
    attacker.need_root()
    assert files.TEST_SWITCH_FILE.exists()  # made by the session fixture
    r = python(REACH_A_FAULT_POINT, {"OP_DBUS_FAULTS": "before-apply", files.TEST_SWITCH_ENV: "1"})
    assert r.returncode == -9, (r.returncode, r.stdout, r.stderr)


def test_the_variable_alone_or_a_marker_another_user_made_is_not_the_switch(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    attacker.need_root()
    marker = tmp_path / "marker"
    marker.touch(mode=0o644)
    monkeypatch.setattr(files, "TEST_SWITCH_FILE", marker)
    monkeypatch.delenv(files.TEST_SWITCH_ENV, raising=False)
    assert not files.testing_enabled()  # the marker without the variable
    monkeypatch.setenv(files.TEST_SWITCH_ENV, "1")
    assert files.testing_enabled()
    uid, gid = attacker.nobody()
    os.chown(marker, uid, gid)
    assert not files.testing_enabled()
    os.chown(marker, 0, 0)
    marker.chmod(0o666)
    assert not files.testing_enabled()
    marker.unlink()
    assert not files.testing_enabled()


def test_the_pct_override_is_ignored_without_the_test_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OP_DBUS_PCT", "/tmp/not-pct")
    monkeypatch.delenv(SWITCH, raising=False)
    assert ProxmoxBackend().pct == "pct"
    if os.geteuid() == 0 and Path("/run/op-dbus-testing").exists():
        monkeypatch.setenv(SWITCH, "1")
        assert ProxmoxBackend().pct == "/tmp/not-pct"
