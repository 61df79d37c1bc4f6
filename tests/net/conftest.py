"""Real-kernel and real-OVS fixtures for the net plugin: throwaway network namespaces and a private OVS instance."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from op_dbus.plugin import Context, Settings, UndoLog
from op_dbus.plugins.net import NetPlugin, NetSection

OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


def sh(*argv: str, check: bool = True) -> str:
    res = subprocess.run(argv, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _can_make_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    return None


def new_netns() -> str:
    name = f"opd-{uuid.uuid4().hex[:8]}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def _throwaway_netns() -> Iterator[str]:
    reason = _can_make_netns()
    if reason:
        pytest.skip(reason)
    name = new_netns()
    yield name
    sh("ip", "netns", "del", name, check=False)


@pytest.fixture
def netns() -> Iterator[str]:
    yield from _throwaway_netns()


@pytest.fixture
def netns2() -> Iterator[str]:
    yield from _throwaway_netns()


@dataclass
class Ovs:
    """A private ovsdb-server + ovs-vswitchd (userspace datapath), vswitchd inside `netns`."""

    dir: Path
    netns: str
    db: subprocess.Popen[bytes]
    vswitchd: subprocess.Popen[bytes]

    @property
    def sock(self) -> str:
        return str(self.dir / "db.sock")

    def vsctl(self, *args: str) -> str:
        return sh("ovs-vsctl", f"--db=unix:{self.sock}", "--timeout=10", *args)


def ovs_missing() -> str | None:
    missing = [b for b in ("ovsdb-server", "ovs-vswitchd", "ovsdb-tool", "ovs-vsctl") if shutil.which(b) is None]
    if missing or not OVS_SCHEMA.exists():
        what = ", ".join(missing) or str(OVS_SCHEMA)
        return f"Open vSwitch is not installed (missing {what}); apt-get install openvswitch-switch"
    return None


def _wait_for(path: Path, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} did not start (exit {proc.poll()})")
        time.sleep(0.005)


def start_ovs(netns: str) -> Ovs:
    d = Path(tempfile.mkdtemp(prefix="opd-ovs-"))
    env = {**os.environ, "OVS_RUNDIR": str(d), "OVS_LOGDIR": str(d), "OVS_DBDIR": str(d), "OVS_SYSCONFDIR": str(d)}
    sh("ovsdb-tool", "create", str(d / "conf.db"), str(OVS_SCHEMA))
    db = subprocess.Popen(["ovsdb-server", str(d / "conf.db"), f"--remote=punix:{d}/db.sock",
                           f"--unixctl={d}/ovsdb-server.ctl", f"--log-file={d}/ovsdb-server.log"],
                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for(d / "db.sock", db, "ovsdb-server")
    sh("ovs-vsctl", f"--db=unix:{d}/db.sock", "--no-wait", "init")
    vswitchd = subprocess.Popen(["ip", "netns", "exec", netns, "ovs-vswitchd", f"unix:{d}/db.sock",
                                 f"--unixctl={d}/ovs-vswitchd.ctl", f"--log-file={d}/ovs-vswitchd.log"],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ovs = Ovs(d, netns, db, vswitchd)
    # A write that waits for ovs-vswitchd's cur_cfg proves it is up.
    ovs.vsctl("set", "Open_vSwitch", ".", "external_ids:opd-test=1")
    return ovs


def stop_ovs(ovs: Ovs) -> None:
    for proc in (ovs.vswitchd, ovs.db):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    shutil.rmtree(ovs.dir, ignore_errors=True)


@pytest.fixture
def ovs(netns: str) -> Iterator[Ovs]:
    reason = ovs_missing()
    if reason:
        pytest.skip(reason)
    o = start_ovs(netns)
    yield o
    stop_ovs(o)


@pytest.fixture
def plugin() -> NetPlugin:
    return NetPlugin()


class Net:
    """The plugin wired to one namespace (and OVS socket), with the steps an engine would take."""

    def __init__(self, netns: str, ovsdb: str | None = None) -> None:
        self.plugin = NetPlugin()
        self.ctx = Context(Settings(netns=netns, ovsdb=ovsdb, job_timeout=10.0))

    async def query(self, scope: NetSection | None = None) -> NetSection:
        return await self.plugin.query(self.ctx, scope)

    async def plan(self, doc: dict) -> tuple[NetSection, list]:
        desired = NetSection.model_validate(doc)
        problems = await self.plugin.check(desired, self.ctx)
        assert problems == [], problems
        current = await self.plugin.query(self.ctx, desired)
        return desired, self.plugin.diff(desired, current)

    async def converge(self, doc: dict) -> tuple[list, UndoLog]:
        desired, changes = await self.plan(doc)
        undo = UndoLog()
        await self.plugin.apply(changes, self.ctx, undo)
        left = self.plugin.diff(desired, await self.plugin.query(self.ctx, desired))
        assert left == [], [c.summary() for c in left]
        return changes, undo

    async def rollback(self, undo: UndoLog) -> None:
        await self.plugin.apply(list(reversed(undo.entries)), self.ctx, UndoLog())

    async def aclose(self) -> None:
        await self.ctx.aclose()


@pytest.fixture
async def net(netns: str, tmp_path: Path):
    # No OVS here: a socket path that does not exist keeps a host's own ovsdb-server out of these tests.
    n = Net(netns, str(tmp_path / "no-ovsdb.sock"))
    yield n
    await n.aclose()
