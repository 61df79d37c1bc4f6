"""A booted lab container: systemd-nspawn --boot of the cached rootfs, reachable from the host over its system bus."""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from lab import LabError, log

CGROUP_ROOT = Path("/sys/fs/cgroup")
CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
VENV_DIR = "/opt/op-dbus"

_numbers = itertools.count()
_running: set[LabMachine] = set()

#: (name, boot seconds, stop seconds) of every machine booted and stopped by this process, for summaries.
TIMINGS: list[tuple[str, float, float]] = []

# Wrapper run as the nspawn process before it becomes nspawn: it moves itself into the machine's own cgroups
# (otherwise nspawn leaves its payload/ and supervisor/ cgroups in the host's root), then gets a private mount
# namespace with a tmpfs on /run/systemd (the host's /run is on disk), then execs nspawn, keeping its PID.
_LAUNCHER = r"""
while [ "$1" != "--" ]; do echo $$ > "$1" || exit 1; shift; done; shift
mkdir -p /run/systemd
exec unshare --mount --propagation private sh -c 'mount -t tmpfs -o mode=755 tmpfs /run/systemd && exec "$@"' sh "$@"
"""


class LabCommandError(subprocess.CalledProcessError):
    """A command inside the lab container failed; the message carries its output."""

    def __str__(self) -> str:
        text = super().__str__()
        for label, stream in (("stdout", self.stdout), ("stderr", self.stderr)):
            if stream:
                shown = stream if isinstance(stream, str) else stream.decode(errors="replace")
                text += f"\n--- {label} ---\n{shown.rstrip()[-4000:]}"
        return text


def cgroup_hierarchies() -> list[Path]:
    """The cgroup hierarchies nspawn uses: the unified one alone, or name=systemd plus the unified one (hybrid)."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        return [CGROUP_ROOT]
    found = [CGROUP_ROOT / name for name in ("systemd", "unified") if (CGROUP_ROOT / name / "cgroup.procs").exists()]
    if not found:
        raise LabError(f"no systemd or unified cgroup hierarchy under {CGROUP_ROOT}")
    return found


def _cgroup_pids(top: Path) -> list[int]:
    pids: list[int] = []
    for procs in top.rglob("cgroup.procs"):
        try:
            pids += [int(word) for word in procs.read_text().split()]
        except OSError:
            continue
    return pids


def _remove_cgroup(top: Path) -> None:
    """Remove a cgroup and its descendants, deepest first (a cgroup with children cannot be removed)."""
    if not top.is_dir():
        return
    for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        directory.rmdir()
    top.rmdir()


def _default_name() -> str:
    # The creating PID in the name lets a later run recognise machines whose creator died (see reap_orphans).
    return f"lab{os.getpid()}n{next(_numbers)}"


_ORPHAN_NAME = re.compile(r"lab-lab(?P<pid>\d+)n\d+")


def reap_orphans() -> list[str]:
    """Power off machines left behind by lab runs that were killed before they could stop them.

    Only machines with a default name (``lab<creator pid>n<number>``) whose creator no longer exists are touched;
    everything in their cgroups was started by that run. Returns the names reaped.
    """
    reaped: list[str] = []
    for hierarchy in cgroup_hierarchies():
        for cgroup in hierarchy.glob("lab-lab*n*"):
            match = _ORPHAN_NAME.fullmatch(cgroup.name)
            if not match or Path(f"/proc/{match['pid']}").exists() or not cgroup.is_dir():
                continue
            for pid in _cgroup_pids(cgroup):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while True:
                try:
                    _remove_cgroup(cgroup)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            name = cgroup.name.removeprefix("lab-")
            for workdir in Path(tempfile.gettempdir()).glob(f"op-dbus-{name}-*"):
                shutil.rmtree(workdir, ignore_errors=True)
            if name not in reaped:
                reaped.append(name)
    for name in reaped:
        log(f"reaped lab machine {name} left behind by a run that died")
    return reaped


class LabMachine:
    """One throw-away boot of the lab rootfs (``--volatile=overlay``: every boot starts from the pristine tree)."""

    def __init__(
        self,
        rootfs: Path | str | None = None,
        wheels: Path | str | None = None,
        *,
        name: str | None = None,
        kernel_args: Iterable[str] = (),
        nspawn_args: Iterable[str] = (),
        boot_timeout: float = 120.0,
    ) -> None:
        from lab import rootfs as rootfs_module
        from lab import wheels as wheels_module

        self.rootfs = Path(rootfs) if rootfs is not None else rootfs_module.rootfs_path()
        if not self.rootfs.is_dir():
            raise LabError(f"no lab rootfs at {self.rootfs}: run `make lab` (or `python -m lab build`) first")
        default_wheels = wheels_module.WHEELHOUSE
        self.wheels = Path(wheels) if wheels is not None else (default_wheels if default_wheels.is_dir() else None)
        self.name = name or _default_name()
        self.kernel_args = list(kernel_args)
        self.nspawn_args = list(nspawn_args)
        self.boot_timeout = boot_timeout
        self.workdir: Path | None = None
        self.boot_seconds: float | None = None
        self.stop_seconds: float | None = None
        self.boot_state: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._leader: int | None = None
        self._cgroups = [hierarchy / f"lab-{self.name}" for hierarchy in cgroup_hierarchies()]

    # -- what tests use ---------------------------------------------------------------------------------------

    @property
    def bus_socket(self) -> Path:
        """The container's system bus socket as seen from the host (its /run/dbus is a bind mount of ours)."""
        if self.workdir is None:
            raise LabError("the lab machine is not started")
        return self.workdir / "dbus" / "system_bus_socket"

    @property
    def bus_address(self) -> str:
        """D-Bus address of the container's system bus, for clients on the host."""
        return f"unix:path={self.bus_socket}"

    @property
    def leader(self) -> int:
        """PID (in the host's PID namespace) of the container's PID 1, its systemd."""
        if self._leader is None:
            raise LabError("the lab machine is not started")
        return self._leader

    @property
    def root(self) -> Path:
        """The container's root filesystem (the overlay it runs on) as seen from the host."""
        return Path(f"/proc/{self.leader}/root")

    @property
    def nspawn_pid(self) -> int:
        """PID of the systemd-nspawn process supervising the container."""
        if self._process is None:
            raise LabError("the lab machine is not started")
        return self._process.pid

    @property
    def cgroups(self) -> list[Path]:
        """The machine's own cgroups (one per hierarchy); nspawn and everything in the container live below them."""
        return list(self._cgroups)

    @property
    def log_path(self) -> Path:
        """systemd-nspawn's own output (the container's console is passive; its journal is inside)."""
        if self.workdir is None:
            raise LabError("the lab machine is not started")
        return self.workdir / "nspawn.log"

    def run(
        self,
        argv: Sequence[str],
        check: bool = True,
        input: str | bytes | None = None,
        timeout: float | None = 120.0,
        env: Mapping[str, str] | None = None,
        text: bool = True,
    ) -> subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes]:
        """Run ``argv`` inside the container (all its namespaces) with a clean environment; output is captured."""
        # nsenter keeps the caller's environment: PIP_*, PYTHON* and PATH of the host would leak in without env -i.
        variables = {"PATH": CLEAN_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        command = ["nsenter", "-t", str(self.leader), "-a", "env", "-i"]
        command += [f"{key}={value}" for key, value in variables.items()]
        command += list(argv)
        if isinstance(input, bytes):
            text = False
        completed = subprocess.run(command, input=input, capture_output=True, text=text, timeout=timeout, check=False)
        if check and completed.returncode != 0:
            raise LabCommandError(completed.returncode, list(argv), completed.stdout, completed.stderr)
        return completed

    def system_state(self, timeout: float = 5.0) -> str:
        """The container manager's SystemState (``running``, ``degraded``, ``starting``, ...)."""
        argv = [
            "busctl", f"--address={self.bus_address}", f"--timeout={timeout}", "get-property",
            "org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "SystemState",
        ]  # fmt: skip
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5, check=False)
        if completed.returncode != 0:
            raise LabError(f"SystemState query failed: {completed.stderr.strip()}")
        # busctl prints the variant as: s "running"
        return completed.stdout.split(maxsplit=1)[1].strip().strip('"')

    def install_op_dbus(self) -> str:
        """Install op-dbus from the offline wheelhouse into a venv of the container's python3; return its script path."""
        if self.wheels is None:
            raise LabError("this lab machine has no wheelhouse bound: run `python -m lab wheels` before booting")
        started = time.monotonic()
        self.run(["sh", "-c", f"[ -x {VENV_DIR}/bin/python ] || python3 -m venv {VENV_DIR}"], timeout=300)
        pip = [f"{VENV_DIR}/bin/pip", "install", "-q", "--disable-pip-version-check", "--root-user-action=ignore"]
        self.run([*pip, "--no-index", "--find-links", "/wheels", "op-dbus"], timeout=300)
        log(f"{self.name}: op-dbus installed in {VENV_DIR} in {time.monotonic() - started:.1f} s")
        return f"{VENV_DIR}/bin/op-dbus"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def nspawn_command(self) -> list[str]:
        """The systemd-nspawn command line (without the cgroup and mount-namespace wrapper)."""
        assert self.workdir is not None
        command = [
            "systemd-nspawn", "--quiet", "-D", str(self.rootfs), "--boot", f"--machine={self.name}",
            # without a host systemd, registering with machined or creating a scope fails ("Failed to open system bus")
            "--register=no", "--keep-unit",
            "--private-network", "--console=passive", "--volatile=overlay",
            "--capability=CAP_IPC_LOCK",  # ovs-vswitchd calls mlockall
            f"--bind={self.workdir / 'dbus'}:/run/dbus",
        ]  # fmt: skip
        if self.wheels is not None:
            command.append(f"--bind-ro={self.wheels}:/wheels")
        return command + self.nspawn_args + self.kernel_args

    def start(self) -> LabMachine:
        """Boot the container and wait until its manager reports SystemState running (or degraded)."""
        if self._process is not None:
            raise LabError(f"lab machine {self.name} is already started")
        if os.geteuid() != 0:
            raise LabError("booting the lab container needs root")
        for tool in ("systemd-nspawn", "unshare", "nsenter", "busctl"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} is missing: run `make lab-host` (lab/setup-host.sh) first")
        if any(cgroup.exists() for cgroup in self._cgroups):
            raise LabError(f"a lab machine named {self.name} is running already ({self._cgroups[0]} exists)")
        self.workdir = Path(tempfile.mkdtemp(prefix=f"op-dbus-{self.name}-"))
        (self.workdir / "dbus").mkdir(mode=0o755)
        for cgroup in self._cgroups:
            cgroup.mkdir()
        started = time.monotonic()
        launcher = ["sh", "-c", _LAUNCHER, "sh", *(str(c / "cgroup.procs") for c in self._cgroups), "--"]
        with open(self.log_path, "wb") as log_file:
            self._process = subprocess.Popen(
                launcher + self.nspawn_command(),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C meant for the test run must not reach nspawn directly
            )
        _running.add(self)
        try:
            self._leader = self._wait_for_leader(started)
            self.boot_state = self._wait_until_booted(started)
        except BaseException:
            self.stop()
            raise
        self.boot_seconds = time.monotonic() - started
        log(f"{self.name}: booted in {self.boot_seconds:.2f} s (SystemState {self.boot_state}, leader {self._leader})")
        return self

    def _check_alive(self) -> None:
        assert self._process is not None
        if self._process.poll() is not None:
            output = self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
            raise LabError(f"systemd-nspawn for {self.name} exited with {self._process.returncode}:\n{output}")

    def _wait_for_leader(self, started: float) -> int:
        """Find nspawn's child that is PID 1 of a new PID namespace: the container's systemd."""
        assert self._process is not None
        children = Path(f"/proc/{self._process.pid}/task/{self._process.pid}/children")
        while time.monotonic() - started < self.boot_timeout:
            self._check_alive()
            try:
                # the kernel ends this list with a space
                pids = [int(word) for word in children.read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
                if len(nspid) >= 2 and nspid[-1] == "1":
                    return pid
            time.sleep(0.005)
        raise LabError(f"{self.name}: no container PID 1 appeared within {self.boot_timeout} s")

    def _wait_until_booted(self, started: float) -> str:
        state = "no bus yet"
        while time.monotonic() - started < self.boot_timeout:
            self._check_alive()
            if self.bus_socket.exists():
                try:
                    state = self.system_state(timeout=2.0)
                except (LabError, subprocess.TimeoutExpired):
                    state = "bus not answering"
                if state in ("running", "degraded"):
                    if state == "degraded":
                        failed = self.run(["systemctl", "--failed", "--no-legend", "--plain"], check=False).stdout
                        log(f"{self.name}: booted degraded; failed units:\n{failed}")
                    return state
                if state in ("maintenance", "stopping"):
                    break
            time.sleep(0.02)
        jobs = ""
        if self._leader is not None:
            jobs = self.run(["systemctl", "list-jobs", "--no-legend"], check=False, timeout=10).stdout
        elapsed = time.monotonic() - started
        raise LabError(f"{self.name}: SystemState is {state!r} after {elapsed:.1f} s; pending jobs:\n{jobs}")

    def stop(self, timeout: float = 30.0) -> None:
        """Power the container off (SIGTERM to nspawn), fall back to SIGKILL, then remove its cgroups and work dir."""
        process, self._process = self._process, None
        _running.discard(self)
        started = time.monotonic()
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # nspawn turns this into a clean poweroff of the container
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: no poweroff within {timeout} s, killing it")
                self._kill_cgroup_members()
                process.kill()
                process.wait(timeout=10)
        self._kill_cgroup_members()
        self._remove_cgroups()
        if process is not None:
            self.stop_seconds = time.monotonic() - started
            log(f"{self.name}: stopped in {self.stop_seconds:.2f} s")
            if self.boot_seconds is not None:
                TIMINGS.append((self.name, self.boot_seconds, self.stop_seconds))
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self._leader = None

    def _kill_cgroup_members(self) -> None:
        """SIGKILL what is left in the machine's own cgroups: only processes this machine started can be there."""
        for cgroup in self._cgroups:
            for pid in _cgroup_pids(cgroup) if cgroup.exists() else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _remove_cgroups(self) -> None:
        deadline = time.monotonic() + 10
        for cgroup in self._cgroups:
            while True:
                try:
                    _remove_cgroup(cgroup)
                    break
                except OSError as exc:
                    # a cgroup stays busy until its last member has been reaped
                    if time.monotonic() > deadline:
                        log(f"{self.name}: could not remove {cgroup}: {exc}")
                        break
                    self._kill_cgroup_members()
                    time.sleep(0.02)

    def __enter__(self) -> LabMachine:
        if self._process is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LabMachine(name={self.name!r}, leader={self._leader}, rootfs={str(self.rootfs)!r})"


@atexit.register
def _stop_leftovers() -> None:
    """A test run that dies between boot and stop must not leave containers running on the host."""
    for machine in list(_running):
        machine.stop(timeout=10)
