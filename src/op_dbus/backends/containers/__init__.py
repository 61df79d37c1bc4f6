"""The container backend contract: list, inspect, create, start, stop, remove, events, and template images.

A backend is a thin client of one container manager (podman, a Docker engine, machined/importd, liblxc,
Proxmox). It holds no policy: the `containers` plugin decides what to change; the backend only speaks the
manager's own protocol and translates its errors into `op_dbus.errors`.

Every container op-dbus creates carries a marker (a label, an annotation or a config comment, whatever
the manager keeps), so a container of the same name that op-dbus did not create is detected and never
touched. Templates are imported once per backend under a name derived from the template's own name.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import json
import re
import tarfile
import tempfile
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from op_dbus.errors import BackendError, OperationTimeout, ServiceUnavailable

MANAGED = "op-dbus.managed"  # marker on every container op-dbus created
IMAGE = "op-dbus.image"  # the template name a container was created from
ENV_KEYS = "op-dbus.env-keys"  # the environment keys the state declared (the image adds its own)
TEMPLATE = "op-dbus.template"  # marker on a template image: its name
TEMPLATE_SHA256 = "op-dbus.sha256"  # ... and the sha256 of the tarball it was imported from
TEMPLATE_SOURCE = "op-dbus.source"

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")

Progress = Callable[[int, int], None]  # (bytes done, bytes total) while a template is imported


def valid_name(name: str) -> bool:
    """A name every backend accepts for a container or template (podman's rule, 63 characters)."""
    return bool(_NAME.fullmatch(name))  # fullmatch: `$` would accept a trailing newline


class UnsupportedFeature(BackendError):
    """The backend cannot do what the state asks (e.g. a bridge attachment it has no means for)."""


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = False


@dataclass
class ContainerSpec:
    """Everything a backend needs to create one container; `image` is an op-dbus template name."""

    name: str
    image: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    autostart: bool = False
    boot: bool = False
    memory: int | None = None  # bytes
    cpus: float | None = None
    bridge: str | None = None
    addresses: list[str] = field(default_factory=list)  # "IP/PREFIX", configured inside the container
    image_sha256: str | None = None  # the template's hash when the state declares one

    @property
    def recorded_image(self) -> str:
        """What a backend records as the container's image: the template name, and its hash when known."""
        return f"{self.image}@sha256:{self.image_sha256}" if self.image_sha256 else self.image

    def labels(self) -> dict[str, str]:
        return {MANAGED: "true", IMAGE: self.recorded_image, ENV_KEYS: ",".join(sorted(self.env))}


@dataclass
class ContainerInfo:
    """What a backend reads back about one container (settings as the manager reports them)."""

    name: str
    managed: bool
    running: bool
    image: str | None = None  # template name recorded at create (None: not created by op-dbus)
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    env_keys: list[str] = field(default_factory=list)  # keys declared when op-dbus created it
    mounts: list[Mount] = field(default_factory=list)
    autostart: bool = False
    boot: bool = False
    memory: int | None = None
    cpus: float | None = None
    bridge: str | None = None
    addresses: list[str] = field(default_factory=list)
    native: dict[str, Any] = field(default_factory=dict)  # backend extras for diagnostics (id, status)

    def spec(self) -> ContainerSpec:
        """The spec that recreates this container as it is (used to undo a removal or recreation)."""
        env = {k: v for k, v in self.env.items() if k in self.env_keys}
        image, sha = split_image(self.image)
        return ContainerSpec(self.name, image or "", self.command, env, list(self.mounts), self.autostart,
                             self.boot, self.memory, self.cpus, self.bridge, list(self.addresses), sha)


def split_image(recorded: str | None) -> tuple[str | None, str | None]:
    """A recorded image ("base" or "base@sha256:HEX") as (template name, hash or None)."""
    if recorded is None:
        return None, None
    name, _, sha = recorded.partition("@sha256:")
    return name, sha or None


@dataclass
class TemplateInfo:
    name: str
    sha256: str | None
    source: str | None
    ref: str  # the backend's own name of the imported image


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done, total)
    return digest.hexdigest()


async def file_chunks(path: Path, progress: Progress | None = None, size: int = 1 << 18) -> AsyncIterator[bytes]:
    """A file as an upload body, reporting progress as it goes."""
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(size):
            done += len(chunk)
            if progress:
                progress(done, total)
            yield chunk


class ContainerBackend(ABC):
    """One container manager. Instances are opened once per command and closed at its end."""

    name: ClassVar[str]
    # Settings a backend can change on an existing container without recreating it.
    mutable: ClassVar[frozenset[str]] = frozenset()
    # Set for a read of everything (introspect): read without starting services as a side effect.
    passive: bool = False

    @abstractmethod
    async def ping(self) -> None:
        """Raise ServiceUnavailable (with what to start) when the manager cannot be reached."""

    @abstractmethod
    async def list(self) -> list[ContainerInfo]:
        """Every container of this manager, managed or not (settings may be partial: use inspect)."""

    @abstractmethod
    async def inspect(self, names: builtins.list[str], fields: frozenset[str] | None = None) -> dict[str, ContainerInfo]:
        """Information about the named containers; names that do not exist are left out.

        `fields` names the settings the caller will read (None: all of them); a backend may answer from a
        cheaper listing when it covers them. Existence, the marker, the image and running are always filled in.
        """

    @abstractmethod
    async def create(self, spec: ContainerSpec) -> None: ...

    @abstractmethod
    async def start(self, name: str) -> None: ...

    @abstractmethod
    async def stop(self, name: str, timeout: float = 10.0) -> None: ...

    @abstractmethod
    async def remove(self, name: str) -> None:
        """Remove a stopped or running container (stopping it first)."""

    async def update(self, name: str, changes: dict[str, Any]) -> None:
        """Change settings listed in `mutable` in place."""
        raise UnsupportedFeature(f"{self.name}: cannot change {', '.join(changes)} of {name} in place")

    async def events(self, since: float, until: float | None = None) -> builtins.list[dict[str, Any]]:
        """Container lifecycle events of this manager since a UNIX time: [{"time", "name", "action"}]."""
        raise UnsupportedFeature(f"the {self.name} backend keeps no event history")

    @abstractmethod
    async def templates(self) -> dict[str, TemplateInfo]:
        """Templates op-dbus imported into this manager, by template name."""

    @abstractmethod
    async def import_template(self, name: str, source: Path, sha256: str | None,
                              progress: Progress | None = None) -> TemplateInfo:
        """Import a rootfs tarball (or directory) as template `name`, replacing an older import."""

    @abstractmethod
    async def remove_template(self, name: str) -> None: ...

    def check_spec(self, spec: ContainerSpec) -> builtins.list[str]:
        """What this backend cannot do of `spec`, as messages (empty: supported)."""
        return []

    async def close(self) -> None:
        return None


@contextlib.contextmanager
def as_tarball(source: Path) -> Iterator[Path]:
    """A template source as a tarball: the file itself, or a directory packed into a temporary tar."""
    if source.is_file():
        yield source
        return
    if not source.is_dir():
        raise BackendError(f"template source {source} is neither a tarball nor a directory")
    with tempfile.TemporaryDirectory(prefix="op-dbus-template-") as tmp:
        tarball = Path(tmp) / "rootfs.tar"
        with tarfile.open(tarball, "w") as tar:
            for entry in sorted(source.iterdir()):
                tar.add(entry, arcname=entry.name)
        yield tarball


async def run_tool(argv: list[str], *, what: str, timeout: float, missing: ServiceUnavailable) -> str:
    """Run a manager's command-line tool (where no API exists) and return its output; errors name the tool.

    `missing` is raised when the tool is not installed; a timeout kills it; a failure carries its last line.
    """
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        raise missing from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise OperationTimeout(f"{what} did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        text = (err or out).decode(errors="replace").strip().splitlines()
        raise BackendError(f"{what} failed: {text[-1] if text else proc.returncode}", code=str(proc.returncode))
    return out.decode()


# Config files op-dbus writes for a container (LXC config, .nspawn settings) open with this comment line, carrying
# in JSON what the file format itself has no place for (the marker, image, env keys, ...).
MARKER = "# op-dbus: "


def marker_line(record: dict[str, Any]) -> str:
    return MARKER + json.dumps(record, sort_keys=True)


def read_marker(text: str) -> dict[str, Any]:
    """The record of a config file's marker line; {} when op-dbus did not write the file (or it was edited)."""
    first, _, _ = text.partition("\n")
    if first.startswith(MARKER):
        with contextlib.suppress(ValueError):
            record = json.loads(first[len(MARKER):])
            if isinstance(record, dict):
                return record
    return {}
