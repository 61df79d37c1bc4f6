"""Proxmox VE containers through `pct`, as the documented command-line interface describes it (pct(1)).

UNVERIFIED ON A REAL PROXMOX: no Proxmox VE can run on the machines this project is developed on. The
backend is written against the documented interface (`pct list`, `pct config`, `pct create VMID TEMPLATE
--opt value`, `pct start|shutdown|destroy`, templates as `STORAGE:vztmpl/FILE` in the storage's
template/cache directory) and proven only by contract tests against a stand-in that follows that
documentation.

Proxmox addresses containers by VMID; the state names them by hostname, which op-dbus keeps unique among
the containers it manages. op-dbus's marker is the `op-dbus` tag plus its record in the description.
Proxmox containers are system containers: they always boot their own init, so `command` and `env` are refused.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import gzip
import json
import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from op_dbus import files
from op_dbus.backends.containers import (
    ContainerBackend,
    ContainerInfo,
    ContainerSpec,
    Mount,
    Progress,
    TemplateInfo,
    as_tarball,
    run_tool,
)
from op_dbus.errors import BackendError, ServiceUnavailable

TAG = "op-dbus"
RECORD = "op-dbus: "
DEFAULT_TEMPLATE_DIR = "/var/lib/vz/template/cache"
DEFAULT_STORAGE = "local"  # the storage whose template/cache directory is DEFAULT_TEMPLATE_DIR
DEFAULT_ROOTFS = "local-lvm:8"  # storage:size in GiB for a new container's root disk
MIB = 1 << 20


def template_file(name: str) -> str:
    return f"op-dbus-{name}.tar.gz"


def parse_list(text: str) -> list[tuple[int, str, str]]:
    """`pct list`: a header, then VMID, Status, optional Lock, Name per line."""
    rows = []
    for line in text.splitlines()[1:]:
        words = line.split()
        if len(words) >= 3 and words[0].isdigit():
            rows.append((int(words[0]), words[1], words[-1]))
    return rows


def parse_options(value: str) -> dict[str, str]:
    """A property string: `name=eth0,bridge=vmbr0,ip=10.0.0.2/24` (a bare first item is the volume)."""
    out: dict[str, str] = {}
    for i, part in enumerate(value.split(",")):
        key, sep, val = part.partition("=")
        if sep:
            out[key] = val
        elif i == 0:
            out["volume"] = part
    return out


def parse_config(name: str, text: str) -> ContainerInfo:
    config: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            config[key.strip()] = value.strip()
    tags = config.get("tags", "").replace(",", ";").split(";")
    description = unquote(config.get("description", ""))
    record: dict[str, Any] = {}
    if description.startswith(RECORD):
        with contextlib.suppress(ValueError):
            record = json.loads(description[len(RECORD):])
    info = ContainerInfo(name=name, managed=TAG in tags and bool(record), running=False, image=record.get("image"),
                         boot=True, autostart=config.get("onboot") == "1")
    if config.get("memory", "").isdigit():
        info.memory = int(config["memory"]) * MIB
    if config.get("cpulimit"):
        info.cpus = float(config["cpulimit"])
    net = parse_options(config["net0"]) if "net0" in config else {}
    if net.get("bridge"):
        info.bridge = net["bridge"]
    if net.get("ip") and net["ip"] not in ("dhcp", "manual"):
        info.addresses = [net["ip"]]
    for key, value in sorted(config.items()):
        if key.startswith("mp") and key[2:].isdigit():
            opts = parse_options(value)
            info.mounts.append(Mount(opts.get("volume", ""), opts.get("mp", ""), opts.get("ro") == "1"))
    info.mounts.sort(key=lambda m: m.target)
    info.native = {"config": config}
    return info


class ProxmoxBackend(ContainerBackend):
    name = "proxmox"

    def __init__(self, *, pct: str | None = None, template_dir: str | None = None, storage: str | None = None,
                 rootfs: str | None = None, timeout: float = 90.0) -> None:
        # another pct binary (the tests' stand-in) only with the test suite's switch on: it runs as root
        self.pct = pct or (os.environ.get("OP_DBUS_PCT") if files.testing_enabled() else None) or "pct"
        self.template_dir = Path(template_dir or os.environ.get("OP_DBUS_PVE_TEMPLATE_DIR") or DEFAULT_TEMPLATE_DIR)
        self.storage = storage or os.environ.get("OP_DBUS_PVE_STORAGE") or DEFAULT_STORAGE
        self.rootfs = rootfs or os.environ.get("OP_DBUS_PVE_ROOTFS") or DEFAULT_ROOTFS
        self.timeout = timeout
        self._vmids: dict[str, int] = {}

    async def _pct(self, *args: str, timeout: float | None = None) -> str:
        missing = ServiceUnavailable("proxmox: `pct` is not installed: this is not a Proxmox VE node",
                                     hint="run op-dbus on the Proxmox node itself")
        return await run_tool([self.pct, *args], what=f"proxmox: pct {' '.join(args[:2])}",
                              timeout=timeout or self.timeout, missing=missing)

    async def _table(self) -> list[tuple[int, str, str]]:
        rows = parse_list(await self._pct("list"))
        self._vmids = {name: vmid for vmid, _, name in rows}
        return rows

    async def _vmid(self, name: str) -> int | None:
        if name not in self._vmids:
            await self._table()
        return self._vmids.get(name)

    async def ping(self) -> None:
        if shutil.which(self.pct) is None:
            raise ServiceUnavailable("proxmox: `pct` is not installed: this is not a Proxmox VE node")
        await self._pct("list", timeout=30)

    async def list(self) -> list[ContainerInfo]:
        rows = await self._table()
        return list((await self.inspect([name for _, _, name in rows])).values())

    async def inspect(self, names: builtins.list[str], fields: frozenset[str] | None = None) -> dict[str, ContainerInfo]:
        rows = await self._table()
        status = {name: (vmid, st) for vmid, st, name in rows}
        found = {}
        for name in names:
            if name not in status:
                continue
            vmid, st = status[name]
            info = parse_config(name, await self._pct("config", str(vmid)))
            info.running = st == "running"
            info.native["vmid"] = vmid
            found[name] = info
        return found

    def check_spec(self, spec: ContainerSpec) -> builtins.list[str]:
        problems = []
        if spec.command:
            problems.append("Proxmox containers boot their own init: `command` is not supported")
        if spec.env:
            problems.append("Proxmox containers take no environment: `env` is not supported")
        if spec.memory and spec.memory % MIB:
            problems.append("Proxmox sets memory in whole MiB")
        if len(spec.addresses) > 1:
            problems.append("Proxmox configures one IPv4 address per interface")
        if spec.addresses and not spec.bridge:
            problems.append("network.ipv4 needs network.bridge (net0 is a veth on that bridge)")
        # --net0 and --mpN are property strings (key=value,key=value): a ',' or '=' in a value would add keys
        for what, value in [("network.bridge", spec.bridge or ""),
                            *((f"mounts: {m.source}", m.source + m.target) for m in spec.mounts)]:
            if "," in value or "=" in value:
                problems.append(f"{what}: Proxmox property strings cannot hold ',' or '=' in a value")
        return problems

    async def create(self, spec: ContainerSpec) -> None:
        rows = await self._table()
        vmid = max([99, *(v for v, _, _ in rows)]) + 1
        record = json.dumps({"image": spec.recorded_image}, sort_keys=True)
        args = ["create", str(vmid), f"{self.storage}:vztmpl/{template_file(spec.image)}",
                "--hostname", spec.name, "--tags", TAG, "--description", RECORD + record,
                "--rootfs", self.rootfs, "--onboot", "1" if spec.autostart else "0", "--unprivileged", "1"]
        if spec.memory:
            args += ["--memory", str(spec.memory // MIB)]
        if spec.cpus:
            args += ["--cores", str(max(1, int(-(-spec.cpus // 1)))), "--cpulimit", f"{spec.cpus:g}"]
        if spec.bridge:
            net = f"name=eth0,bridge={spec.bridge}"
            if spec.addresses:
                net += f",ip={spec.addresses[0]}"
            args += ["--net0", net]
        for i, m in enumerate(spec.mounts):
            args += [f"--mp{i}", f"{m.source},mp={m.target}" + (",ro=1" if m.read_only else "")]
        await self._pct(*args, timeout=max(self.timeout, 300))
        self._vmids[spec.name] = vmid

    async def _require(self, name: str) -> str:
        vmid = await self._vmid(name)
        if vmid is None:
            raise BackendError(f"proxmox: no container with hostname {name}")
        return str(vmid)

    async def start(self, name: str) -> None:
        await self._pct("start", await self._require(name))

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        # shutdown asks the container's init; --forceStop turns a timeout into a stop
        await self._pct("shutdown", await self._require(name), "--timeout", str(int(timeout)), "--forceStop", "1",
                        timeout=timeout + 60)

    async def remove(self, name: str) -> None:
        vmid = await self._vmid(name)
        if vmid is None:
            return
        rows = {v: st for v, st, _ in await self._table()}
        if rows.get(vmid) == "running":
            await self._pct("stop", str(vmid))
        await self._pct("destroy", str(vmid), "--purge", "1")
        self._vmids.pop(name, None)

    async def templates(self) -> dict[str, TemplateInfo]:
        found = {}
        for record in sorted(self.template_dir.glob("op-dbus-*.tar.gz.json")):
            with contextlib.suppress(ValueError, OSError):
                data = json.loads(record.read_text())
                name = data["name"]
                found[name] = TemplateInfo(name, data.get("sha256"), data.get("source"),
                                           f"{self.storage}:vztmpl/{template_file(name)}")
        return found

    async def import_template(self, name: str, source: Path, sha256: str | None,
                              progress: Progress | None = None) -> TemplateInfo:
        target = self.template_dir / template_file(name)
        if not self.template_dir.is_dir():
            raise ServiceUnavailable(f"proxmox: template directory {self.template_dir} does not exist",
                                     hint="OP_DBUS_PVE_TEMPLATE_DIR names the template/cache directory of a storage")
        with as_tarball(source) as tarball:
            await asyncio.to_thread(self._compress, tarball, target, progress)
        (self.template_dir / (template_file(name) + ".json")).write_text(
            json.dumps({"name": name, "sha256": sha256, "source": str(source)}))
        return TemplateInfo(name, sha256, str(source), f"{self.storage}:vztmpl/{template_file(name)}")

    @staticmethod
    def _compress(tarball: Path, target: Path, progress: Progress | None) -> None:
        """Proxmox takes container templates as .tar.gz/.tar.xz/.tar.zst: store a plain tar gzip-compressed."""
        partial = target.with_name(target.name + ".partial")
        total, done = tarball.stat().st_size, 0
        with tarball.open("rb") as src:
            if src.read(2) == b"\x1f\x8b":
                src.seek(0)
                with partial.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                src.seek(0)
                with gzip.open(partial, "wb", compresslevel=3) as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
        partial.rename(target)

    async def remove_template(self, name: str) -> None:
        (self.template_dir / template_file(name)).unlink(missing_ok=True)
        (self.template_dir / (template_file(name) + ".json")).unlink(missing_ok=True)
