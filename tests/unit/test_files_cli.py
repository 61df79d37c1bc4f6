"""The state directory's checks seen from the command line: the agent-only mode (`run --no-log`) checks it like
every other mode, and a user other than root gets a message, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import attacker

SRC = Path(__file__).resolve().parents[2] / "src"


def op_dbus(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "op_dbus", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def shared() -> Iterator[Path]:
    attacker.need_root()
    with attacker.shared_dir() as path:
        yield path


@pytest.fixture
def state_file(tmp_path: Path) -> Path:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"version": 1, "plugins": {}}))
    return path


@pytest.mark.parametrize("how", ["owned by nobody", "mode 0777"])
def test_run_no_log_refuses_an_unsafe_state_dir(shared: Path, state_file: Path, how: str) -> None:
    """The agent-only mode never looked at its state directory, where it keeps agent.json and its locks."""
    state_dir = shared / "state"
    state_dir.mkdir(mode=0o700)
    if how == "mode 0777":
        state_dir.chmod(0o777)
    else:
        uid, gid = attacker.nobody()
        os.chown(state_dir, uid, gid)
    try:
        r = op_dbus("--state-dir", str(state_dir), "run", "--no-log", "--state-file", str(state_file),
                    timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"op-dbus run --no-log kept running with a state directory {how}")
    assert r.returncode == 2, r.stderr
    assert f"state directory {state_dir}" in r.stderr and "Traceback" not in r.stderr
    assert "owned by uid 65534" in r.stderr if how != "mode 0777" else "writable by group or others" in r.stderr
    assert not (state_dir / "agent.json").exists()


@pytest.mark.parametrize("command", ["confirm", "abort"])
def test_confirm_and_abort_by_another_user_say_what_to_do(shared: Path, command: str) -> None:
    state_dir = shared / "state"
    state_dir.mkdir(mode=0o700)
    r = attacker.run(["python", "-m", "op_dbus", "--state-dir", str(state_dir), command])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{state_dir}: permission denied (running as uid 65534)" in r.stderr
    assert "run op-dbus as root" in r.stderr


@pytest.mark.parametrize("command", ["confirm", "abort"])
def test_confirm_and_abort_by_another_user_cannot_create_the_state_dir(shared: Path, command: str) -> None:
    state_dir = shared / "missing" / "state"
    r = attacker.run(["python", "-m", "op_dbus", "--state-dir", str(state_dir), command])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert f"cannot create or reach the state directory {state_dir}: permission denied" in r.stderr
