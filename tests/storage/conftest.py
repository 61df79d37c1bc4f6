"""A lab machine with a loop device and a running UDisks2 (with the udevd it depends on), for the storage plugin.

A container runs no udevd of its own, and without udev's database UDisks2 knows no block device. So the test
starts both daemons itself, in the lab's mount and PID namespaces but the host's network namespace, where the
kernel's uevents arrive; udevd gets only the block-device rules (nothing that would rename or re-address the
host's network interfaces), and a writable sysfs so that it can synthesise the change events mkfs causes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab.machine import LabMachine

RULES = ("60-block.rules", "60-persistent-storage.rules", "80-udisks2.rules")
SETUP = (
    "systemctl mask --runtime udisks2.service && "  # no second udisksd by bus activation inside the container
    "mkdir -p /run/udev /run/sysrw /run/udev-rules && "
    "mount -t sysfs sysfs /run/sysrw && mount -o remount,rw /run/sysrw && mount --bind /run/sysrw/devices /sys/devices && "
    f"cp {' '.join('/lib/udev/rules.d/' + r for r in RULES)} /run/udev-rules/ && "
    "mount --bind /run/udev-rules /lib/udev/rules.d"
)


@dataclass
class StorageLab:
    """The lab machine, its loop device, op-dbus installed inside it, and the lab's own tools as the oracle."""

    machine: LabMachine
    device: str
    image: Path
    exe: str

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.machine.run(["sh", "-c", script], check=check, timeout=120)  # type: ignore[no-any-return]

    def op(self, *args: str, state: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self.exe, "--state-dir", "/var/lib/op-dbus-test", *args]
        if state is not None:
            import json

            path = self.machine.root / "root/storage-state.json"
            path.write_text(json.dumps({"version": 1, "plugins": {"storage": state}}))
            path.chmod(0o600)
            argv.append("/root/storage-state.json")
        return self.machine.run(argv, check=False, timeout=180)  # type: ignore[no-any-return]

    def fs_type(self) -> str:
        return self.sh(f"blkid -o value -s TYPE {self.device} || true").stdout.strip()

    def mounted_at(self) -> list[str]:
        out = self.sh(f"findmnt -n -o TARGET -S {self.device} || true").stdout
        return sorted(out.split())

    def fstab(self) -> str:
        return self.sh("cat /etc/fstab 2>/dev/null || true").stdout


def _wait(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def udisks_lab(rootfs: Path, wheels: Path, workdir: Path, size_mb: int = 96) -> Iterator[StorageLab]:
    """Boot a lab machine with a fresh loop device (an image in `workdir`), udevd and udisksd running for it."""
    image = workdir / "disk.img"
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    attach = subprocess.run(["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False)
    if attach.returncode != 0:
        raise LoopUnavailable(f"no free loop device on this machine: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    machine = LabMachine(rootfs, wheels, nspawn_args=[f"--bind={device}"])
    daemons: list[subprocess.Popen[bytes]] = []
    try:
        machine.start()
        lab = StorageLab(machine, device, image, machine.install_op_dbus())
        lab.sh(SETUP)
        enter = ["nsenter", "-t", str(machine.leader), "-m", "-p", "--"]
        with open(workdir / "daemons.log", "wb") as log:
            daemons.append(subprocess.Popen([*enter, "/lib/systemd/systemd-udevd"], stdout=log, stderr=log))
            _wait(lambda: (machine.root / "run/udev/control").exists(), "udevd's control socket")
            sysname = Path(device).name
            subprocess.run([*enter, "udevadm", "trigger", "--action=add", "--settle",
                            f"/sys/devices/virtual/block/{sysname}"], check=True, timeout=60)
            daemons.append(subprocess.Popen([*enter, "/usr/libexec/udisks2/udisksd"], stdout=log, stderr=log))
        _wait(lambda: lab.sh(f"udisksctl info -b {device}", check=False).returncode == 0, "udisksd to know the device")
        yield lab
    finally:
        # the daemons live in the lab's PID namespace, children of their nsenter: stopped first, by their PIDs
        for proc in daemons:
            with contextlib.suppress(OSError, ValueError):
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGTERM)
        with contextlib.suppress(Exception):
            machine.stop()
        for proc in daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        subprocess.run(["losetup", "-d", device], check=False)


class LoopUnavailable(RuntimeError):
    """The machine has no free loop device."""


@pytest.fixture(scope="module")
def storage(lab_assets: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StorageLab]:
    try:
        with udisks_lab(lab_assets.rootfs, lab_assets.wheels, tmp_path_factory.mktemp("disk")) as lab:
            yield lab
    except LoopUnavailable as exc:
        pytest.skip(str(exc))
