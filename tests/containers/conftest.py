"""Fixtures for the container backends: busybox templates, a private podman service, a private lxcpath."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import Result

BUSYBOX = Path("/bin/busybox")
SRC = Path(__file__).resolve().parents[2] / "src"
APPLETS = ("sh", "sleep", "echo", "cat", "nc", "ip", "ls", "hostname", "env", "test", "true", "ps", "ifconfig")


def make_rootfs(root: Path, variant: str) -> Path:
    """A minimal OS tree: static busybox, its applets, os-release; `variant` marks which template it is."""
    for d in ("bin", "sbin", "etc", "usr/lib", "usr/bin", "tmp", "proc", "sys", "dev", "run", "var", "root"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "usr/lib/os-release").write_text(f'ID=busybox\nNAME="op-dbus test {variant}"\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    (root / "etc/variant").write_text(variant + "\n")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    return root


def make_tarball(root: Path, tarball: Path) -> Path:
    with tarfile.open(tarball, "w") as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, arcname=entry.name)
    return tarball


@dataclass(frozen=True)
class Templates:
    """Two distinguishable templates (their /etc/variant says "one" or "two")."""

    one: Path
    two: Path
    one_dir: Path

    def sha(self, which: Path) -> str:
        import hashlib

        return hashlib.sha256(which.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Templates:
    if not BUSYBOX.exists():
        pytest.skip("no static busybox: apt-get install busybox-static")
    base = tmp_path_factory.mktemp("templates")
    one_dir = make_rootfs(base / "one", "one")
    two_dir = make_rootfs(base / "two", "two")
    return Templates(make_tarball(one_dir, base / "one.tar"), make_tarball(two_dir, base / "two.tar"), one_dir)


# -- podman -----------------------------------------------------------------------------------------------------

CONTAINERS_CONF = """\
[containers]
netns = "none"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
"""

STORAGE_CONF = """\
[storage]
driver = "overlay"
runroot = "{d}/run"
graphroot = "{d}/root"
"""


@dataclass
class Podman:
    """A private podman: its own storage and config, its API on a socket, and its CLI as the test oracle."""

    dir: Path
    socket: Path
    env: dict[str, str] = field(default_factory=dict)

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = ["podman", "--root", str(self.dir / "root"), "--runroot", str(self.dir / "run"), *args]
        return subprocess.run(argv, env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def inspect(self, name: str) -> dict[str, Any] | None:
        r = self.cli("container", "inspect", name, check=False)
        return json.loads(r.stdout)[0] if r.returncode == 0 else None


def podman_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "rootful podman needs root"
    for tool in ("podman", "runc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed: run lab/setup-host.sh"
    return None


def start_podman(base: Path) -> tuple[Podman, subprocess.Popen[bytes]]:
    d = base
    (d / "containers.conf").write_text(CONTAINERS_CONF.format(d=d))
    (d / "storage.conf").write_text(STORAGE_CONF.format(d=d))
    env = {"CONTAINERS_CONF": str(d / "containers.conf"), "CONTAINERS_STORAGE_CONF": str(d / "storage.conf")}
    pod = Podman(d, d / "podman.sock", env)
    argv = ["podman", "--root", str(d / "root"), "--runroot", str(d / "run"), "system", "service", "--time=0",
            f"unix://{pod.socket}"]
    with open(d / "service.log", "wb") as log:
        proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + 20
    while not pod.socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"podman system service did not start: {(d / 'service.log').read_text()[-2000:]}")
        time.sleep(0.01)
    return pod, proc


def stop_podman(pod: Podman, proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(Exception):
        pod.cli("rm", "-af", "-t", "0", check=False, timeout=120)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    with contextlib.suppress(Exception):
        pod.cli("system", "reset", "-f", check=False, timeout=120)
    subprocess.run(["umount", "-R", str(pod.dir / "root" / "overlay")], capture_output=True, check=False)
    shutil.rmtree(pod.dir, ignore_errors=True)
    # podman's cgroupfs manager leaves its (now empty) parent cgroups behind
    for parent in Path("/sys/fs/cgroup").glob("*/libpod_parent"):
        for d in sorted((p for p in parent.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            parent.rmdir()


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    reason = podman_unavailable()
    if reason:
        pytest.skip(reason)
    pod, proc = start_podman(Path(tmp_path_factory.mktemp("podman")))
    try:
        yield pod
    finally:
        stop_podman(pod, proc)


# -- running op-dbus ---------------------------------------------------------------------------------------------



@dataclass
class OpDbus:
    """The real `op-dbus` command with its own state dir and the backends' endpoints in its environment."""

    state_dir: Path
    env: dict[str, str]
    files: Path

    def __call__(self, *args: str, timeout: float = 180) -> Result:
        argv = [sys.executable, "-m", "op_dbus", "--state-dir", str(self.state_dir), *args]
        # this checkout's op_dbus, not whichever one the interpreter has installed
        path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
        p = subprocess.run(argv, env={**os.environ, "PYTHONPATH": path, **self.env}, capture_output=True, text=True,
                           timeout=timeout, check=False)
        return Result(p.returncode, p.stdout, p.stderr)

    def state(self, name: str, section: dict[str, Any]) -> Path:
        path = self.files / f"{name}.json"
        path.write_text(json.dumps({"version": 1, "plugins": {"containers": section}}, indent=2))
        path.chmod(0o600)
        return path


# -- lxc --------------------------------------------------------------------------------------------------------

@dataclass
class Lxc:
    """A private lxcpath, and the lxc-* tools on it as the test oracle."""

    path: Path

    def tool(self, tool: str, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool, "-P", str(self.path), "-n", name, *args], capture_output=True, text=True,
                              timeout=60, check=check)

    def state(self, name: str) -> str | None:
        r = self.tool("lxc-info", name, "-s", "-H", check=False)
        return r.stdout.strip() if r.returncode == 0 else None


@pytest.fixture(scope="module")
def lxc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lxc]:
    if os.geteuid() != 0:
        pytest.skip("LXC system containers need root")
    if shutil.which("lxc-start") is None:
        pytest.skip("lxc is not installed: run lab/setup-host.sh")
    path = Path(tmp_path_factory.mktemp("lxcpath"))
    path.chmod(0o755)
    box = Lxc(path)
    try:
        yield box
    finally:
        for config in path.glob("*/config"):
            name = config.parent.name
            box.tool("lxc-stop", name, "-k", check=False)
            box.tool("lxc-destroy", name, check=False)
        shutil.rmtree(path, ignore_errors=True)
