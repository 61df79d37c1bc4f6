"""LXC containers under one lxcpath: settings are LXC config files, lifecycle goes through the lxc-* tools.

Why the tools and not a binding: the Python binding (python3-lxc) is a Debian package for the system
interpreter only; PyPI has no maintained build of it, so a venv cannot import it, and driving the C API
through ctypes would mean mirroring `struct lxc_container`'s function-pointer layout, which changes between
releases. lxc-start, lxc-stop and lxc-destroy are liblxc's own front ends and keep the container's monitor
process alive on their own. Everything that is only reading stays native: a container's settings are its
config file (`LXCPATH/NAME/config`, whose first line carries op-dbus's marker), and whether it runs is
whether its monitor listens on its command socket (`@LXCPATH/NAME/command` in /proc/net/unix): one file
read answers for every container, where `lxc-ls --running` asks each monitor in turn.

A template is unpacked once into `LXCPATH/.op-dbus-templates/NAME/rootfs-ID`; each container's root is an
overlay of it (`lxc.rootfs.path = overlay:TREE:LXCPATH/NAME/delta0`). Without a bridge a container
gets `lxc.net.0.type = empty` (loopback only): LXC never creates networking on the host by itself.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import shlex
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

from op_dbus import files
from op_dbus.backends.containers import (
    ContainerBackend,
    ContainerInfo,
    ContainerSpec,
    Mount,
    Progress,
    TemplateInfo,
    marker_line,
    read_marker,
    run_tool,
)
from op_dbus.errors import BackendError, ServiceUnavailable

DEFAULT_LXCPATH = "/var/lib/lxc"
TEMPLATES = ".op-dbus-templates"
INIT = "/.op-dbus-init"  # script in the container's root that execs the declared command (lxc.init.cmd cannot quote)
CPU_PERIOD = 100_000


def cgroup_v1_memory() -> bool:
    """Whether the memory controller is on a v1 hierarchy (hybrid hosts): decides lxc.cgroup vs lxc.cgroup2 keys."""
    return Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()


def render_config(spec: ContainerSpec, lxcpath: Path, template_rootfs: Path, v1: bool) -> str:
    record = {"managed": True, "image": spec.recorded_image, "env_keys": sorted(spec.env), "command": spec.command,
              "boot": spec.boot}
    lines = [marker_line(record),
             f"lxc.uts.name = {spec.name}",
             f"lxc.rootfs.path = overlay:{template_rootfs}:{lxcpath / spec.name / 'delta0'}",
             "lxc.mount.auto = proc:mixed sys:ro cgroup:mixed",
             "lxc.autodev = 1",
             "lxc.pty.max = 8",
             "lxc.tty.max = 0",
             # busybox and most shells ignore SIGPWR, LXC's default halt signal
             "lxc.signal.halt = SIGTERM",
             f"lxc.start.auto = {1 if spec.autostart else 0}"]
    if not spec.boot:
        lines.append(f"lxc.init.cmd = {INIT}")
    lines += [f"lxc.environment = {k}={v}" for k, v in sorted(spec.env.items())]
    for m in spec.mounts:
        options = "bind,ro" if m.read_only else "bind"
        kind = "dir" if Path(m.source).is_dir() else "file"
        lines.append(f"lxc.mount.entry = {m.source} {m.target.lstrip('/')} none {options},create={kind} 0 0")
    if spec.bridge:
        lines += ["lxc.net.0.type = veth", f"lxc.net.0.link = {spec.bridge}", "lxc.net.0.flags = up",
                  "lxc.net.0.name = eth0"]
        lines += [f"lxc.net.0.ipv4.address = {a}" for a in spec.addresses]
    else:
        lines.append("lxc.net.0.type = empty")
    prefix = "lxc.cgroup" if v1 else "lxc.cgroup2"
    if spec.memory:
        lines.append(f"{prefix}.memory.limit_in_bytes = {spec.memory}" if v1 else f"{prefix}.memory.max = {spec.memory}")
    if spec.cpus:
        quota = int(spec.cpus * CPU_PERIOD)
        lines += ([f"{prefix}.cpu.cfs_period_us = {CPU_PERIOD}", f"{prefix}.cpu.cfs_quota_us = {quota}"] if v1
                  else [f"{prefix}.cpu.max = {quota} {CPU_PERIOD}"])
    return "\n".join(lines) + "\n"


def parse_config(name: str, text: str) -> ContainerInfo:
    record = read_marker(text)
    info = ContainerInfo(name=name, managed=bool(record.get("managed")), running=False, image=record.get("image"),
                         env_keys=list(record.get("env_keys") or []), command=record.get("command"),
                         boot=bool(record.get("boot")))
    quota = period = None
    for line in text.splitlines():
        if line.startswith("#") or "=" not in line:
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        if key == "lxc.environment":
            k, _, v = value.partition("=")
            info.env[k] = v
        elif key == "lxc.start.auto":
            info.autostart = value == "1"
        elif key == "lxc.mount.entry":
            words = value.split()
            if len(words) >= 4 and "bind" in words[3].split(","):
                info.mounts.append(Mount(words[0], "/" + words[1], "ro" in words[3].split(",")))
        elif key == "lxc.net.0.link":
            info.bridge = value
        elif key == "lxc.net.0.ipv4.address":
            info.addresses.append(value)
        elif key in ("lxc.cgroup.memory.limit_in_bytes", "lxc.cgroup2.memory.max") and value.isdigit():
            info.memory = int(value)
        elif key == "lxc.cgroup.cpu.cfs_quota_us":
            quota = int(value)
        elif key == "lxc.cgroup.cpu.cfs_period_us":
            period = int(value)
        elif key == "lxc.cgroup2.cpu.max":
            q, _, p = value.partition(" ")
            if q.isdigit():
                quota, period = int(q), int(p or CPU_PERIOD)
    if quota and period:
        info.cpus = quota / period
    info.mounts.sort(key=lambda m: m.target)
    return info


def listening_sockets() -> set[str]:
    """Abstract unix socket names that are listening (state 01 = LISTEN), from /proc/net/unix."""
    names = set()
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            if len(fields) >= 8 and fields[7].startswith("@") and fields[3] == "00010000":
                names.add(fields[7])
    return names


class LxcBackend(ContainerBackend):
    name = "lxc"

    def __init__(self, lxcpath: str | Path | None = None, *, timeout: float = 90.0) -> None:
        self.lxcpath = Path(lxcpath or os.environ.get("OP_DBUS_LXC_PATH") or DEFAULT_LXCPATH)
        self.timeout = timeout

    async def _run(self, *argv: str, timeout: float | None = None) -> str:
        return await run_tool(list(argv), what=f"lxc: {' '.join(argv[:4])}", timeout=timeout or self.timeout,
                              missing=ServiceUnavailable(f"lxc: {argv[0]} is not installed", hint="apt-get install lxc"))

    def _tool(self, tool: str, name: str, *args: str) -> list[str]:
        return [tool, "-P", str(self.lxcpath), "-n", name, *args]

    def config_file(self, name: str) -> Path:
        return self.lxcpath / name / "config"

    def template_dir(self, name: str) -> Path:
        return self.lxcpath / TEMPLATES / name

    def _running(self) -> set[str]:
        prefix = f"@{self.lxcpath}/"
        return {s[len(prefix):-len("/command")] for s in listening_sockets()
                if s.startswith(prefix) and s.endswith("/command")}

    # -- reading --------------------------------------------------------------------------------------------------

    async def ping(self) -> None:
        if shutil.which("lxc-start") is None:
            raise ServiceUnavailable("lxc: the lxc tools are not installed", hint="apt-get install lxc")
        if not self.lxcpath.is_dir():
            raise ServiceUnavailable(f"lxc: the lxcpath {self.lxcpath} does not exist",
                                     hint="create it, or name another one with OP_DBUS_LXC_PATH")

    async def list(self) -> list[ContainerInfo]:
        if not self.lxcpath.is_dir():
            return []
        names = sorted(p.parent.name for p in self.lxcpath.glob("*/config") if not p.parent.name.startswith("."))
        return list((await self.inspect(names)).values())

    async def inspect(self, names: builtins.list[str], fields: frozenset[str] | None = None) -> dict[str, ContainerInfo]:
        running = self._running()
        found = {}
        for name in names:
            try:
                text = self.config_file(name).read_text()
            except (FileNotFoundError, NotADirectoryError):
                continue
            info = parse_config(name, text)
            info.running = name in running
            found[name] = info
        return found

    # -- changing -------------------------------------------------------------------------------------------------

    def check_spec(self, spec: ContainerSpec) -> builtins.list[str]:
        if spec.addresses and not spec.bridge:
            return ["network.ipv4 needs network.bridge: the address is set on the container's end of the veth"]
        if not spec.boot and not spec.command:
            return ["an lxc container that does not boot needs a command"]
        problems: builtins.list[str] = []
        # LXC trims a config value and splits a mount entry into fstab fields at whitespace
        for key, value in sorted(spec.env.items()):
            if value != value.strip():
                problems.append(f"env[{key!r}]: an lxc environment value cannot start or end with whitespace "
                                "(lxc.environment trims it)")
        for m in spec.mounts:
            if any(c.isspace() or c == "\\" for c in m.source + m.target):
                problems.append(f"mounts: {m.source} -> {m.target}: an lxc mount path cannot hold whitespace or "
                                "'\\' (lxc.mount.entry is an fstab line)")
        return problems

    async def create(self, spec: ContainerSpec) -> None:
        template = self._template_rootfs(spec.image)
        if template is None or not template.is_dir():
            raise BackendError(f"lxc: template {spec.image} is not imported into {self.lxcpath}")
        directory = self.lxcpath / spec.name
        if directory.exists():
            raise BackendError(f"lxc: {directory} already exists")
        delta = directory / "delta0"
        delta.mkdir(parents=True, mode=0o755)
        directory.chmod(0o770)
        if spec.command:
            script = delta / INIT.lstrip("/")
            script.write_text("#!/bin/sh\nexec " + shlex.join(spec.command) + "\n")
            script.chmod(0o755)
        # 0600, atomic, never through a link: the config carries the environment, secrets included. lxc-create
        # makes the container's directory 0770 root:root, which the trusted-directory check refuses; the write is
        # made relative to that directory opened once, so no planted link is followed.
        files.atomic_write(self.config_file(spec.name),
                           render_config(spec, self.lxcpath, template, cgroup_v1_memory()).encode(), 0o600,
                           check_dir=False)

    async def start(self, name: str) -> None:
        await self._run(*self._tool("lxc-start", name, "-d"))
        for _ in range(100):
            if name in self._running():
                return
            await asyncio.sleep(0.01)
        raise BackendError(f"lxc: {name} did not stay up after lxc-start",
                           hint=f"run `lxc-start -P {self.lxcpath} -n {name} -F -l DEBUG` to see why")

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        if name in self._running():
            await self._run(*self._tool("lxc-stop", name, "-t", str(int(timeout))), timeout=timeout + 30)

    async def remove(self, name: str) -> None:
        if name in self._running():
            await self._run(*self._tool("lxc-stop", name, "-k"))
        if self.config_file(name).exists():
            await self._run(*self._tool("lxc-destroy", name))
        if (self.lxcpath / name).exists():
            shutil.rmtree(self.lxcpath / name)
        base = self.lxcpath / TEMPLATES
        for template in base.iterdir() if base.is_dir() else []:
            self._collect(template.name)

    # -- templates ------------------------------------------------------------------------------------------------

    def _template_record(self, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(ValueError, OSError):
            data = json.loads((self.template_dir(name) / "template.json").read_text())
            return data if isinstance(data, dict) and data.get("rootfs") else None
        return None

    def _template_rootfs(self, name: str) -> Path | None:
        record = self._template_record(name)
        return self.template_dir(name) / record["rootfs"] if record else None

    async def templates(self) -> dict[str, TemplateInfo]:
        found = {}
        base = self.lxcpath / TEMPLATES
        for directory in sorted(base.iterdir()) if base.is_dir() else []:
            record = self._template_record(directory.name)
            if record is not None and not directory.name.startswith("."):
                found[directory.name] = TemplateInfo(directory.name, record.get("sha256"), record.get("source"),
                                                     str(directory / record["rootfs"]))
        return found

    async def import_template(self, name: str, source: Path, sha256: str | None,
                              progress: Progress | None = None) -> TemplateInfo:
        # Every import gets a tree of its own: containers made from an earlier import keep theirs as the lower
        # layer of their overlay, and it goes once no container uses it any more.
        directory = self.template_dir(name)
        tree = f"rootfs-{(sha256 or '')[:12] or format(time.time_ns(), 'x')}"
        staging = directory / f".{tree}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            await asyncio.to_thread(self._unpack, source, staging, progress)
            shutil.rmtree(directory / tree, ignore_errors=True)
            staging.rename(directory / tree)
            record = directory / ".template.json.partial"
            record.write_text(json.dumps({"sha256": sha256, "source": str(source), "rootfs": tree}))
            record.rename(directory / "template.json")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._collect(name)
        return TemplateInfo(name, sha256, str(source), str(directory / tree))

    def _collect(self, name: str) -> None:
        """Remove a template's older trees that no container's config refers to."""
        current = self._template_rootfs(name)
        configs = [p.read_text() for p in self.lxcpath.glob("*/config")]
        for tree in self.template_dir(name).glob("rootfs-*"):
            if tree != current and not any(f"overlay:{tree}:" in text for text in configs):
                shutil.rmtree(tree, ignore_errors=True)

    @staticmethod
    def _unpack(source: Path, target: Path, progress: Progress | None) -> None:
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
            return
        total = source.stat().st_size
        root = os.path.realpath(target)
        with source.open("rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            for member in tar:
                # A rootfs needs what tarfile's safe filters strip (setuid bits, device nodes, absolute symlinks),
                # so only the one real danger is refused: writing outside the target, directly or through a link
                # unpacked earlier.
                for path in [member.name] + ([member.linkname] if member.islnk() else []):
                    resolved = os.path.realpath(os.path.join(root, path.lstrip("/")))
                    if os.path.commonpath([root, resolved]) != root:
                        raise BackendError(f"lxc: template {source} has an entry that leaves the rootfs: {path}")
                tar.extract(member, target, filter="fully_trusted")
                if progress:
                    progress(raw.tell(), total)

    async def remove_template(self, name: str) -> None:
        shutil.rmtree(self.template_dir(name), ignore_errors=True)
