"""Another user on the machine, for tests that play the attacker: processes run as `nobody` (setuid in the child)
and directories that user can reach."""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user `nobody` to play the attacker")
    return entry.pw_uid, entry.pw_gid


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("playing another user (setuid to nobody, chown) needs root")


def _drop(uid: int, gid: int) -> Any:
    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    return drop


def _env() -> dict[str, str]:
    # op_dbus from this checkout and its dependencies from this interpreter's site-packages, which another user can
    # read even when the interpreter itself lives in a private home directory
    paths = [str(SRC), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths)), "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"}


@functools.cache
def python_for_nobody() -> str:
    """An interpreter of this Python version that `nobody` can execute and that imports op_dbus."""
    uid, gid = nobody()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, shutil.which(version, path="/usr/bin:/usr/local/bin") or ""):
        if not candidate:
            continue
        try:
            probe = subprocess.run([candidate, "-c", "import op_dbus.cli.main, cryptography, click"], env=_env(),
                                   preexec_fn=_drop(uid, gid), capture_output=True, timeout=60, check=False)
        except PermissionError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no {version} interpreter that the user nobody can run with op-dbus's dependencies")


def run(argv: list[str], *, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run argv as nobody; "python" as argv[0] is an interpreter that imports op_dbus."""
    uid, gid = nobody()
    if argv[0] == "python":
        argv = [python_for_nobody(), *argv[1:]]
    return subprocess.run(argv, env=_env(), preexec_fn=_drop(uid, gid), capture_output=True, text=True,
                          timeout=timeout, check=False, **kw)


def popen(argv: list[str], **kw: Any) -> subprocess.Popen[str]:
    uid, gid = nobody()
    if argv[0] == "python":
        argv = [python_for_nobody(), *argv[1:]]
    return subprocess.Popen(argv, env=_env(), preexec_fn=_drop(uid, gid), text=True, **kw)


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A root-owned 0755 directory under /tmp that every user can reach (pytest's tmp_path is private)."""
    path = Path(tempfile.mkdtemp(prefix="op-dbus-attack-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
