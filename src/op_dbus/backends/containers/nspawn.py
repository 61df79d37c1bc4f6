"""systemd-nspawn containers through machined and importd over D-Bus; each container runs as systemd-nspawn@NAME.

Images live where machined keeps them (/var/lib/machines): a template is imported once with import1's
ImportTar, and every container is a machined clone of it (CloneImage). A container's settings are a
`.nspawn` file in /etc/systemd/nspawn, the place nspawn itself reads them from, whose first line carries
op-dbus's marker; memory and CPU limits are a drop-in of the container's unit. Starting and stopping are
systemd jobs on the unit; whether a container runs is machined's ListMachines.

`root` is the managed system's root directory as op-dbus sees it ("/" normally; another machine's root,
e.g. /proc/PID/root, when op-dbus manages a container host over its bus from outside).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import shlex
from pathlib import Path
from typing import Any

from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus

from op_dbus import files
from op_dbus.backends import dbus
from op_dbus.backends.containers import (
    ContainerBackend,
    ContainerInfo,
    ContainerSpec,
    Mount,
    Progress,
    TemplateInfo,
    as_tarball,
    marker_line,
    netattach,
    read_marker,
)
from op_dbus.errors import ApplyFailed, BackendError, OperationTimeout, ServiceUnavailable

MACHINE1 = "org.freedesktop.machine1"
MACHINE1_PATH = "/org/freedesktop/machine1"
MACHINE1_MANAGER = "org.freedesktop.machine1.Manager"
IMPORT1 = "org.freedesktop.import1"
IMPORT1_PATH = "/org/freedesktop/import1"
IMPORT1_MANAGER = "org.freedesktop.import1.Manager"
SYSTEMD = "org.freedesktop.systemd1"
SYSTEMD_PATH = "/org/freedesktop/systemd1"
SYSTEMD_MANAGER = "org.freedesktop.systemd1.Manager"

HOST0 = "host0"  # the container's end of nspawn's veth
TEMPLATE_PREFIX = "op-dbus-template-"
CPU_PERIOD_US = 1_000_000


def unit_of(name: str) -> str:
    return f"systemd-nspawn@{name}.service"


def template_image(name: str) -> str:
    return TEMPLATE_PREFIX + name


def render_settings(spec: ContainerSpec) -> str:
    """The .nspawn file of a container: nspawn's own settings, with op-dbus's record on the first line."""
    record = {"managed": True, "image": spec.recorded_image, "env_keys": sorted(spec.env), "addresses": spec.addresses}
    lines = [marker_line(record), "[Exec]", f"Boot={'yes' if spec.boot else 'no'}",
             "PrivateUsers=no"]
    if not spec.boot:
        # a stub init as PID 1 reaps the command's children; it powers off cleanly on SIGRTMIN+4, while nspawn's
        # default for a non-booting container is SIGKILL, which fails the unit and degrades the host's systemd
        lines += ["ProcessTwo=yes", "KillSignal=SIGRTMIN+4"]
    if spec.command:
        lines.append("Parameters=" + shlex.join(spec.command))
    lines += [f"Environment={k}={v}" for k, v in sorted(spec.env.items())]
    if spec.mounts:
        lines.append("[Files]")
        lines += [f"{'BindReadOnly' if m.read_only else 'Bind'}={m.source}:{m.target}" for m in spec.mounts]
    lines.append("[Network]")
    # without a bridge the container gets a network namespace of its own with only loopback
    lines += [f"Bridge={spec.bridge}"] if spec.bridge else ["Private=yes", "VirtualEthernet=no"]
    return "\n".join(lines) + "\n"


def parse_settings(name: str, text: str) -> ContainerInfo:
    record = read_marker(text)
    info = ContainerInfo(name=name, managed=bool(record.get("managed")), running=False, image=record.get("image"),
                         env_keys=list(record.get("env_keys") or []), addresses=list(record.get("addresses") or []))
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        if key == "Boot":
            info.boot = value == "yes"
        elif key == "Parameters":
            info.command = shlex.split(value)
        elif key == "Environment":
            k, _, v = value.partition("=")
            info.env[k] = v
        elif key in ("Bind", "BindReadOnly"):
            source, _, target = value.partition(":")
            info.mounts.append(Mount(source, target or source, key == "BindReadOnly"))
        elif key == "Bridge":
            info.bridge = value
    info.mounts.sort(key=lambda m: m.target)
    return info


def render_limits(spec: ContainerSpec) -> str | None:
    if not spec.memory and not spec.cpus:
        return None
    lines = ["[Service]"]
    if spec.memory:
        lines.append(f"MemoryMax={spec.memory}")
    if spec.cpus:
        lines.append(f"CPUQuota={round(spec.cpus * 100)}%")
    return "\n".join(lines) + "\n"


def parse_limits(text: str, info: ContainerInfo) -> None:
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "MemoryMax" and value.isdigit():
            info.memory = int(value)
        elif key == "CPUQuota" and value.endswith("%"):
            info.cpus = int(value[:-1]) / 100


async def connect(address: str | None) -> MessageBus:
    """A system-bus connection that may carry file descriptors (ImportTar takes the tarball's fd)."""
    return await dbus.connect(address, unix_fds=True)


class NspawnBackend(ContainerBackend):
    name = "nspawn"

    def __init__(self, bus_address: str | None = None, root: str | Path | None = None, *,
                 timeout: float = 90.0) -> None:
        self.bus_address = bus_address
        self.root = Path(root or os.environ.get("OP_DBUS_NSPAWN_ROOT") or "/")
        self.timeout = timeout
        self._client: dbus.Client | None = None
        self._jobs: dict[str, asyncio.Future[str]] = {}
        self._finished_jobs: dict[str, str] = {}
        self._transfers: dict[int, asyncio.Future[str]] = {}
        self._image_names: set[str] | None = None
        self._running: bool | None = None
        # passive: read without starting machined (what `introspect` wants); any write turns it off
        self.passive = False

    # -- plumbing -------------------------------------------------------------------------------------------------

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def settings_file(self, name: str) -> Path:
        return self.path(f"/etc/systemd/nspawn/{name}.nspawn")

    def limits_file(self, name: str) -> Path:
        return self.path(f"/etc/systemd/system/{unit_of(name)}.d/op-dbus-limits.conf")

    def template_record(self, name: str) -> Path:
        return self.path(f"/var/lib/op-dbus/nspawn-templates/{name}.json")

    async def client(self) -> dbus.Client:
        if self._client is None:
            client = dbus.Client(await connect(self.bus_address), timeout=self.timeout)
            client.on_signal(self._job_removed, interface=SYSTEMD_MANAGER, member="JobRemoved")
            client.on_signal(self._transfer_removed, interface=IMPORT1_MANAGER, member="TransferRemoved")
            await client.add_match(f"type='signal',sender='{SYSTEMD}',interface='{SYSTEMD_MANAGER}',member='JobRemoved'")
            await client.add_match(f"type='signal',interface='{IMPORT1_MANAGER}',member='TransferRemoved'")
            await client.call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "Subscribe")
            self._client = client
        return self._client

    def _job_removed(self, msg: Message) -> None:
        _id, job, _unit, result = msg.body
        future = self._jobs.pop(job, None)
        if future is not None and not future.done():
            future.set_result(result)
        else:
            self._finished_jobs[job] = result  # the signal can beat the StartUnit reply

    def _transfer_removed(self, msg: Message) -> None:
        transfer_id, _path, result = msg.body
        future = self._transfers.get(transfer_id)
        if future is not None and not future.done():
            future.set_result(result)

    async def _job(self, method: str, name: str) -> None:
        client = await self.client()
        (job,) = await client.call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, method, "ss", [unit_of(name), "replace"])
        result = self._finished_jobs.pop(job, None)
        if result is None:
            future = self._jobs.setdefault(job, asyncio.get_running_loop().create_future())
            try:
                result = await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                raise OperationTimeout(f"nspawn: {method} {unit_of(name)} did not finish in {self.timeout:.0f} s") from None
        if result != "done":
            raise ApplyFailed(f"nspawn: {method} {unit_of(name)}: job {result}",
                              hint=f"see `journalctl -u {unit_of(name)}` on the container host")

    async def _machined_running(self) -> bool:
        """Whether machined runs now: reading it through the bus would otherwise start it (bus activation)."""
        if self._running is None:
            client = await self.client()
            (owned,) = await client.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                         "NameHasOwner", "s", [MACHINE1])
            self._running = bool(owned)
        return self._running

    async def _machines(self) -> set[str]:
        # every running container registers with machined, so when it is not running no container runs
        if self.passive and not await self._machined_running():
            return set()
        client = await self.client()
        (rows,) = await client.call(MACHINE1, MACHINE1_PATH, MACHINE1_MANAGER, "ListMachines")
        return {row[0] for row in rows if row[1] == "container"}

    async def _images(self) -> set[str]:
        # machined measures every image for ListImages: one answer serves all reads until something is written
        if self._image_names is None:
            if self.passive and not await self._machined_running():
                # the images op-dbus makes (clones, imports) are machined's writable ones, in /var/lib/machines
                machines = self.path("/var/lib/machines")
                self._image_names = {p.name.removesuffix(".raw") for p in machines.iterdir()
                                     if not p.name.startswith(".")} if machines.is_dir() else set()
            else:
                client = await self.client()
                (rows,) = await client.call(MACHINE1, MACHINE1_PATH, MACHINE1_MANAGER, "ListImages")
                self._image_names = {row[0] for row in rows}
        return set(self._image_names)

    async def _reload(self) -> None:
        await (await self.client()).call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "Reload")

    # -- reading --------------------------------------------------------------------------------------------------

    async def ping(self) -> None:
        client = await self.client()
        if self.passive:
            # machined need not run, but it must be installed: ask the bus which names it can start
            (names,) = await client.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                         "ListActivatableNames", timeout=10)
            if MACHINE1 not in names and not await self._machined_running():
                raise ServiceUnavailable("nspawn: systemd-machined is not installed on this system",
                                         hint="apt-get install systemd-container")
            return
        await client.call(MACHINE1, MACHINE1_PATH, MACHINE1_MANAGER, "ListMachines", timeout=10)

    async def list(self) -> list[ContainerInfo]:
        images, running = await asyncio.gather(self._images(), self._machines())
        names = sorted((images | running) - {".host"})
        names = [n for n in names if not n.startswith(TEMPLATE_PREFIX)]
        return list((await self.inspect(names)).values())

    async def inspect(self, names: builtins.list[str], fields: frozenset[str] | None = None) -> dict[str, ContainerInfo]:
        if not names:
            return {}
        images, running = await asyncio.gather(self._images(), self._machines())
        present = [name for name in names if name in images or name in running]
        enabled: set[str] = set()
        if present and (fields is None or "autostart" in fields):
            client = await self.client()
            # an instance is enabled through a .wants symlink that unit-file listings do not show: ask per unit,
            # all questions in flight at once on the one connection
            states = await asyncio.gather(*(client.call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "GetUnitFileState", "s",
                                                        [unit_of(n)]) for n in present))
            enabled = {unit_of(n) for n, (state,) in zip(present, states, strict=True)
                       if state in ("enabled", "enabled-runtime")}
        found = {}
        for name in present:
            try:
                info = parse_settings(name, self.settings_file(name).read_text())
            except FileNotFoundError:
                info = ContainerInfo(name=name, managed=False, running=False)
            with contextlib.suppress(FileNotFoundError):
                parse_limits(self.limits_file(name).read_text(), info)
            info.running = name in running
            info.autostart = unit_of(name) in enabled
            if info.running and info.bridge and info.addresses and (fields is None or "network" in fields):
                info.addresses = await asyncio.to_thread(netattach.addresses_in, await self._netns(name), HOST0)
            found[name] = info
        return found

    # -- changing -------------------------------------------------------------------------------------------------

    def check_spec(self, spec: ContainerSpec) -> builtins.list[str]:
        problems = []
        if spec.addresses and not spec.bridge:
            problems.append("network.ipv4 needs network.bridge: the address is set on the container's end of the veth")
        if spec.addresses and spec.boot:
            problems.append("a booted nspawn container configures its own network (systemd-networkd on host0): "
                            "leave network.ipv4 out")
        if not spec.boot and not spec.command:
            problems.append("an nspawn container that does not boot needs a command")
        # .nspawn settings are split into words and unescaped by systemd: a value is written as is only when it
        # holds none of the characters that would change its meaning there
        for key, value in sorted(spec.env.items()):
            if any(c.isspace() or c in "\"'\\" for c in value):
                problems.append(f"env[{key!r}]: an nspawn environment value cannot hold whitespace, quotes or "
                                "backslashes (Environment= in the .nspawn file splits and unescapes them)")
        for m in spec.mounts:
            if any(c in ":\\" for c in m.source + m.target):
                problems.append(f"mounts: {m.source} -> {m.target}: an nspawn bind mount path cannot hold ':' or "
                                "'\\' (Bind= separates and unescapes with them)")
        return problems

    async def create(self, spec: ContainerSpec) -> None:
        self._image_names = None
        self.passive = False
        client = await self.client()
        settings = self.settings_file(spec.name)
        settings.parent.mkdir(parents=True, exist_ok=True)
        # 0600, atomic, never through a link: the settings carry the environment, secrets included
        # Another machine's root (/proc/PID/root) resolves to "/" from here, so the directory's ancestors cannot be
        # checked by name; the write then stays relative to the directory opened once, never through a link.
        files.atomic_write(settings, render_settings(spec).encode(), 0o600, check_dir=self.root == Path("/"))
        limits = render_limits(spec)
        if limits:
            self.limits_file(spec.name).parent.mkdir(parents=True, exist_ok=True)
            self.limits_file(spec.name).write_text(limits)
        try:
            await client.call(MACHINE1, MACHINE1_PATH, MACHINE1_MANAGER, "CloneImage", "ssb",
                              [template_image(spec.image), spec.name, False], timeout=self.timeout)
            if spec.autostart:
                await client.call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "EnableUnitFiles", "asbb",
                                  [[unit_of(spec.name)], False, True])
            if limits:
                await self._reload()  # the unit's drop-in must be loaded before it starts
        except BaseException:
            settings.unlink(missing_ok=True)
            self.limits_file(spec.name).unlink(missing_ok=True)
            raise

    async def start(self, name: str) -> None:
        await self._job("StartUnit", name)
        # the unit is up once nspawn runs; the machine shows in machined a moment later
        for _ in range(200):
            if name in await self._machines():
                break
            await asyncio.sleep(0.01)
        else:
            raise ApplyFailed(f"nspawn: {name} started but never registered with machined")
        with contextlib.suppress(FileNotFoundError):
            info = parse_settings(name, self.settings_file(name).read_text())
            if info.bridge and info.addresses:
                # nspawn puts host0 into the container; its addresses are set from outside, in its namespace
                await asyncio.to_thread(netattach.configure, await self._netns(name), HOST0, info.addresses)

    async def _netns(self, name: str) -> Path:
        """The container's network namespace, through the managed system's /proc (its PID namespace)."""
        client = await self.client()
        (path,) = await client.call(MACHINE1, MACHINE1_PATH, MACHINE1_MANAGER, "GetMachine", "s", [name])
        leader = await client.get_property(MACHINE1, path, "org.freedesktop.machine1.Machine", "Leader")
        return self.path(f"/proc/{leader}/ns/net")

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        await self._job("StopUnit", name)

    async def remove(self, name: str) -> None:
        self._image_names = None
        self.passive = False
        client = await self.client()
        if name in await self._machines():
            await self._job("StopUnit", name)
        (state,) = await client.call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "GetUnitFileState", "s", [unit_of(name)])
        if state in ("enabled", "enabled-runtime"):
            await client.call(SYSTEMD, SYSTEMD_PATH, SYSTEMD_MANAGER, "DisableUnitFiles", "asb", [[unit_of(name)], False])
        if name in await self._images():
            await client.call(MACHINE1, MACHINE1_PATH, MACHINE1_MANAGER, "RemoveImage", "s", [name], timeout=self.timeout)
        self.settings_file(name).unlink(missing_ok=True)
        limits = self.limits_file(name)
        if limits.exists():
            limits.unlink()
            with contextlib.suppress(OSError):
                limits.parent.rmdir()
            await self._reload()

    # -- templates ------------------------------------------------------------------------------------------------

    async def templates(self) -> dict[str, TemplateInfo]:
        images = await self._images()
        found = {}
        for image in sorted(images):
            if not image.startswith(TEMPLATE_PREFIX):
                continue
            name = image[len(TEMPLATE_PREFIX):]
            record: dict[str, Any] = {}
            with contextlib.suppress(FileNotFoundError, ValueError):
                record = json.loads(self.template_record(name).read_text())
            found[name] = TemplateInfo(name, record.get("sha256"), record.get("source"), image)
        return found

    async def import_template(self, name: str, source: Path, sha256: str | None,
                              progress: Progress | None = None) -> TemplateInfo:
        self._image_names = None
        client = await self.client()
        image = template_image(name)
        with as_tarball(source) as tarball, tarball.open("rb") as f:
            msg = Message(destination=IMPORT1, path=IMPORT1_PATH, interface=IMPORT1_MANAGER, member="ImportTar",
                          signature="hsbb", body=[0, image, True, False], unix_fds=[f.fileno()])
            reply = await asyncio.wait_for(client.bus.call(msg), self.timeout)
            if reply.message_type == MessageType.ERROR:
                raise dbus.error_from_reply(reply, f"nspawn: importing template {name} (import1.ImportTar)")
            transfer_id, _path = reply.body
            future = self._transfers.setdefault(transfer_id, asyncio.get_running_loop().create_future())
            try:
                result = await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                raise OperationTimeout(f"nspawn: importing template {name} took over {self.timeout:.0f} s") from None
            finally:
                self._transfers.pop(transfer_id, None)
            if progress:
                size = tarball.stat().st_size
                progress(size, size)
        if result != "done":
            raise BackendError(f"nspawn: importd could not import template {name} from {source}: {result}",
                               hint="see `journalctl -u systemd-importd` on the container host")
        record = self.template_record(name)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"sha256": sha256, "source": str(source)}))
        return TemplateInfo(name, sha256, str(source), image)

    async def remove_template(self, name: str) -> None:
        self._image_names = None
        client = await self.client()
        if template_image(name) in await self._images():
            await client.call(MACHINE1, MACHINE1_PATH, MACHINE1_MANAGER, "RemoveImage", "s", [template_image(name)])
        self.template_record(name).unlink(missing_ok=True)

    async def close(self) -> None:
        if self._client is not None:
            self._client.bus.disconnect()
            self._client = None
