"""Containers on pluggable backends (podman, docker, nspawn, lxc, proxmox), created from managed templates.

State section::

    {"templates": {"base": {"source": "/srv/templates/base.tar", "sha256": "..."}},
     "containers": {"web-1": {"backend": "podman", "image": "base", "state": "running",
                              "command": ["/bin/httpd", "-f"], "env": {"TZ": "UTC"},
                              "mounts": [{"source": "/srv/www", "target": "/var/www", "read_only": true}],
                              "network": {"bridge": "br0", "ipv4": {"address": [{"ip": "198.18.0.20", "prefix": 24}]}},
                              "limits": {"memory": "512M", "cpus": 1}, "autostart": true}}}

`state` is running, stopped or absent. Settings other than `state` are fixed when a container is created:
changing one recreates the container, and the plan says so (`recreate`, with the fields that differ) before
anything happens. Only containers the file names are read or changed; a container of that name that op-dbus
did not create (no marker) is refused. A template is imported once into each backend whose containers use it,
after its tarball's sha256 has been checked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from op_dbus.backends.containers import (
    ContainerBackend,
    ContainerInfo,
    ContainerSpec,
    Mount,
    Progress,
    sha256_file,
    split_image,
    valid_name,
)
from op_dbus.errors import ApplyFailed, BackendError, InvalidInput, Problem
from op_dbus.plugin import Change, Context, Plugin, Section, UndoLog
from op_dbus.secret import Env, Secret, live_env, split_env

BACKENDS = ("podman", "docker", "nspawn", "lxc", "proxmox")
BackendName = Literal["podman", "docker", "nspawn", "lxc", "proxmox"]

_SIZE = re.compile(r"([0-9]+)([KMGT]?)")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _name(value: str) -> str:
    if not valid_name(value):
        raise ValueError(f"not a container or template name: {value!r} (letters, digits, _ . -; at most 63)")
    return value


def _size(value: str) -> str:
    if not _SIZE.fullmatch(value):
        raise ValueError(f"not a size: {value!r} (a whole number with an optional K, M, G or T suffix, e.g. 512M)")
    return value


def _sha(value: str) -> str:
    if not _SHA256.fullmatch(value):
        raise ValueError("not a sha256: expected 64 lower-case hex digits")
    return value


# What no name or value may carry into a backend's config file or command line: C0 and C1 control characters (a
# newline would start a line of its own: `lxc.hook.pre-start = ...`, `Privileged=yes`), DEL, and the Unicode line
# separators that Python's own line splitting honours.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# a bridge is a kernel interface: at most 15 bytes, no '/', ':' or whitespace, not '.' or '..'
_IFNAME = re.compile(r"[^/:\s]{1,15}")


def control_characters(value: str) -> str | None:
    """The first control character in `value`, named for a message (`U+000A`), or None."""
    found = _CONTROL.search(value)
    return f"U+{ord(found.group()):04X}" if found else None


def _text_problems(fields: list[tuple[str, str]]) -> list[str]:
    problems: list[str] = []
    for where, value in fields:
        bad = control_characters(value)
        if bad:
            problems.append(f"{where}: control character {bad} is not allowed (names and values reach config files "
                            "and command lines)")
    return problems


Name = Annotated[str, AfterValidator(_name)]
Size = Annotated[str, AfterValidator(_size)]


def parse_size(value: str) -> int:
    number, unit = _SIZE.fullmatch(value).groups()  # type: ignore[union-attr]
    return int(number) * _UNITS[unit]


def format_size(value: int) -> str:
    """Bytes in the largest unit that divides them exactly: what `query` reports for a memory limit."""
    for unit in ("T", "G", "M", "K"):
        if value % _UNITS[unit] == 0:
            return f"{value // _UNITS[unit]}{unit}"
    return str(value)


class Template(Section):
    source: str
    sha256: Annotated[str, AfterValidator(_sha)] | None = None

    @model_validator(mode="after")
    def _absolute(self) -> Template:
        if not self.source.startswith("/"):
            raise ValueError("source must be an absolute path (a rootfs tarball or directory)")
        if problems := _text_problems([("source", self.source)]):
            raise ValueError("; ".join(problems))
        return self


class MountConfig(Section):
    source: str
    target: str
    read_only: bool = False


class Address(Section):
    ip: str
    prefix: int = Field(ge=0, le=32)


class IPv4(Section):
    address: list[Address] = []


class NetworkConfig(Section):
    bridge: str | None = None
    ipv4: IPv4 | None = None


class Limits(Section):
    memory: Size | None = None
    cpus: float | int | None = Field(default=None, gt=0)


class ContainerConfig(Section):
    backend: BackendName
    image: Name | None = None
    state: Literal["running", "stopped", "absent"] = "running"
    autostart: bool | None = None
    boot: bool | None = None
    command: list[str] | None = None
    env: Env | None = None  # a value may be secret: see op_dbus.secret
    mounts: list[MountConfig] | None = None
    network: NetworkConfig | None = None
    limits: Limits | None = None

    @model_validator(mode="after")
    def _image_needed(self) -> ContainerConfig:
        if self.state != "absent" and self.image is None:
            raise ValueError("image is required unless state is absent")
        return self

    @model_validator(mode="after")
    def _no_injection(self) -> ContainerConfig:
        """Every string that reaches a backend's file or command line is one line of plain text."""
        fields = [(f"command[{i}]", arg) for i, arg in enumerate(self.command or [])]
        problems: list[str] = []
        for key, value in (self.env or {}).items():
            if not _ENV_NAME.fullmatch(key):
                problems.append(f"env[{key!r}]: not an environment variable name (letters, digits, _; not a digit "
                                "first)")
            if isinstance(value, str):
                fields.append((f"env[{key!r}]", value))
        for i, m in enumerate(self.mounts or []):
            fields += [(f"mounts[{i}].source", m.source), (f"mounts[{i}].target", m.target)]
            if not m.source.startswith("/") or not m.target.startswith("/"):
                problems.append(f"mounts[{i}]: source and target must be absolute paths")
        net = self.network
        if net is not None and net.bridge is not None:
            if not _IFNAME.fullmatch(net.bridge) or net.bridge in (".", "..") or len(net.bridge.encode()) > 15:
                problems.append(f"network.bridge: {net.bridge!r} is not an interface name (1 to 15 bytes, no '/', "
                                "':' or whitespace)")
            fields.append(("network.bridge", net.bridge))
        for i, a in enumerate(net.ipv4.address if net is not None and net.ipv4 is not None else []):
            try:
                ipaddress.IPv4Address(a.ip)
            except ValueError:
                problems.append(f"network.ipv4.address[{i}].ip: not an IPv4 address: {a.ip!r}")
        problems += _text_problems(fields)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class PodConfig(Section):
    """A pod from a Kubernetes Pod (or one-replica Deployment) manifest; its hash decides recreation."""

    backend: Literal["podman"] = "podman"
    manifest: dict[str, Any]
    state: Literal["running", "stopped", "absent"] = "running"

    @model_validator(mode="after")
    def _supported(self) -> PodConfig:
        from op_dbus.backends.containers.kube import check_manifest

        problems = check_manifest(self.manifest)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ContainersState(Section):
    templates: dict[Name, Template] = {}
    containers: dict[Name, ContainerConfig] = {}
    pods: dict[Name, PodConfig] = {}


# Fields fixed at creation; a difference in any of them recreates the container.
FIXED = ("image", "boot", "command", "env", "mounts", "network", "limits", "autostart")
ACTION_ORDER = {"import": 0, "remove": 1, "recreate": 2, "create": 3, "stop": 4, "start": 5, "forget": 6}


# -- conversion between the state model and the backend contract ----------------------------------------------

def spec_of(name: str, want: ContainerConfig, templates: dict[str, Template] | None = None) -> ContainerSpec:
    """The backend spec of a declared container, without its secret env values (`with_secrets` adds them)."""
    net = want.network or NetworkConfig()
    template = (templates or {}).get(want.image or "")
    limits = want.limits or Limits()
    return ContainerSpec(
        name=name, image=want.image or "", command=want.command, env=split_env(want.env)[0],
        mounts=sorted((Mount(m.source, m.target, m.read_only) for m in want.mounts or []), key=lambda m: m.target),
        autostart=bool(want.autostart), boot=bool(want.boot),
        memory=parse_size(limits.memory) if limits.memory else None,
        cpus=float(limits.cpus) if limits.cpus else None, bridge=net.bridge,
        addresses=[f"{a.ip}/{a.prefix}" for a in (net.ipv4.address if net.ipv4 else [])],
        image_sha256=template.sha256 if template else None,
    )


def spec_to_check(name: str, want: ContainerConfig) -> ContainerSpec:
    """The spec a backend's `check_spec` judges: every env name, with secret values withheld (an empty string)."""
    spec = spec_of(name, want)
    return dataclasses.replace(spec, env={**spec.env, **dict.fromkeys(split_env(want.env)[1], "")})


def with_secrets(spec: ContainerSpec, secrets: dict[str, Secret]) -> ContainerSpec:
    """The spec with its secret env values in clear, as the backend must write them: only ever while applying."""
    if not secrets:
        return spec
    return dataclasses.replace(spec, env={**spec.env, **{k: s.reveal() for k, s in secrets.items()}})


def config_of(backend: str, info: ContainerInfo, want: ContainerConfig | None,
              template_sha256: str | None = None) -> ContainerConfig:
    """The live container as a state entry: only the fields `want` names (all of them when `want` is None).

    When the state pins its template's hash (`template_sha256`), a container made from another content of that
    template reports its image as NAME@HASH-PREFIX, so the plan recreates it from the new content.
    """

    def named(field: str) -> bool:
        return want is None or getattr(want, field) is not None

    values: dict[str, Any] = {"backend": backend, "state": "running" if info.running else "stopped"}
    if named("image"):
        image, sha = split_image(info.image)
        if template_sha256 is not None and sha != template_sha256:
            image = f"{image}@{(sha or 'unknown')[:12]}"
        values["image"] = image
    if named("autostart"):
        values["autostart"] = info.autostart
    if named("boot") and (want is not None or info.boot):
        values["boot"] = info.boot
    if named("command") and (want is not None or info.command is not None):
        values["command"] = info.command
    if named("env"):
        # the image and the manager add variables of their own: report the keys the state declares, or declared
        # when the container was created, so a key dropped from the file shows as a difference
        keys = set(info.env_keys) | set((want.env or {}) if want is not None else ())
        env = live_env({k: v for k, v in sorted(info.env.items()) if k in keys}, want.env if want is not None else None)
        if want is not None or env:
            values["env"] = env
    if named("mounts") and (want is not None or info.mounts):
        values["mounts"] = [MountConfig.model_construct(source=m.source, target=m.target, read_only=m.read_only)
                            for m in sorted(info.mounts, key=lambda m: m.target)]
    if named("network") and (want is not None or info.bridge or info.addresses):
        addresses = []
        for text in info.addresses:
            ip, _, prefix = text.partition("/")
            addresses.append(Address.model_construct(ip=ip, prefix=int(prefix or 32)))
        values["network"] = NetworkConfig.model_construct(
            bridge=info.bridge, ipv4=IPv4.model_construct(address=addresses) if addresses else None)
    if named("limits") and (want is not None or info.memory or info.cpus):
        values["limits"] = Limits.model_construct(memory=format_size(info.memory) if info.memory else None,
                                                  cpus=_number(info.cpus) if info.cpus else None)
    for field in FIXED:
        values.setdefault(field, None)
    return ContainerConfig.model_construct(**{"boot": None, **values})


def _number(value: float) -> float | int:
    value = round(value, 3)
    return int(value) if value == int(value) else value


def canonical(field: str, value: Any) -> Any:
    """One comparable form per fixed field (unset network/limits/env/mounts equal their empty forms)."""
    if field == "env":
        return dict(sorted((value or {}).items()))
    if field == "mounts":
        return sorted(((m.source, m.target, m.read_only) for m in value or []), key=lambda t: t[1])
    if field == "network":
        if value is None:
            return (None, ())
        addresses = tuple((a.ip, a.prefix) for a in (value.ipv4.address if value.ipv4 else []))
        return (value.bridge, addresses)
    if field == "limits":
        if value is None:
            return (None, None)
        return (parse_size(value.memory) if value.memory else None, round(float(value.cpus), 3) if value.cpus else None)
    if field in ("autostart", "boot"):
        return bool(value)
    return value


def _dump(value: Any) -> Any:
    if isinstance(value, Section):
        return value.model_dump(mode="json", exclude_none=True)
    if isinstance(value, list):
        return [_dump(v) for v in value]
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, Secret):
        return value.to_json()  # the log and the plan hold its HMAC, never the value
    return value


# -- backends ---------------------------------------------------------------------------------------------------

BackendFactory = Callable[[Context], ContainerBackend]


def _podman(ctx: Context) -> ContainerBackend:
    from op_dbus.backends.containers.podman import PodmanBackend

    return PodmanBackend(_option(ctx, "podman_socket"), timeout=ctx.settings.job_timeout)


def _docker(ctx: Context) -> ContainerBackend:
    from op_dbus.backends.containers.docker import DockerBackend

    return DockerBackend(_option(ctx, "docker_socket"), timeout=ctx.settings.job_timeout)


def _nspawn(ctx: Context) -> ContainerBackend:
    from op_dbus.backends.containers.nspawn import NspawnBackend

    return NspawnBackend(ctx.settings.bus_address, _option(ctx, "nspawn_root"), timeout=ctx.settings.job_timeout)


def _lxc(ctx: Context) -> ContainerBackend:
    from op_dbus.backends.containers.lxc import LxcBackend

    return LxcBackend(_option(ctx, "lxc_path"), timeout=ctx.settings.job_timeout)


def _proxmox(ctx: Context) -> ContainerBackend:
    from op_dbus.backends.containers.proxmox import ProxmoxBackend

    return ProxmoxBackend(pct=_option(ctx, "pct"), template_dir=_option(ctx, "proxmox_template_dir"),
                          timeout=ctx.settings.job_timeout)


FACTORIES: dict[str, BackendFactory] = {"podman": _podman, "docker": _docker, "nspawn": _nspawn, "lxc": _lxc,
                                        "proxmox": _proxmox}


def _option(ctx: Context, key: str) -> Any:
    """A backend endpoint from the settings (`extra["containers"]`); None: the backend's default or environment."""
    return (ctx.settings.extra.get("containers") or {}).get(key)


async def pod_backend(ctx: Context, name: str) -> Any:
    """The pod side of a backend (see op_dbus.backends.containers.kube.PodBackend); podman's libpod API today."""
    from op_dbus.backends.containers.kube import PodmanPods

    b: Any = await backend(ctx, name)
    return PodmanPods(b.http, b.api)


def pod_hash(manifest: dict[str, Any] | None) -> str | None:
    from op_dbus.backends.containers.kube import manifest_hash

    return manifest_hash(manifest) if manifest is not None else None


async def backend(ctx: Context, name: str) -> ContainerBackend:
    factory = FACTORIES.get(name)
    if factory is None:
        raise InvalidInput(f"the {name} container backend is not available in this build")

    async def close(b: ContainerBackend) -> None:
        await b.close()

    async def open_() -> ContainerBackend:
        return factory(ctx)

    return await ctx.resource(f"containers.{name}", open_, close)  # type: ignore[no-any-return]


def tty_progress(label: str) -> Progress | None:
    """A progress line on stderr while a template is hashed or imported, when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    last = [-1]

    def report(done: int, total: int) -> None:
        percent = done * 100 // total if total else 100
        if percent != last[0]:
            last[0] = percent
            sys.stderr.write(f"\r{label}: {percent:3d}% of {total / 1e6:.1f} MB")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report


class ContainersPlugin(Plugin[ContainersState]):
    name = "containers"
    model = ContainersState
    # after the network (a bridge must exist before a container joins it) and before the units that use them
    order = 40

    # -- reading -------------------------------------------------------------------------------------------------

    async def query(self, ctx: Context, scope: ContainersState | None = None) -> ContainersState:
        if scope is None:
            return await self._query_all(ctx)
        by_backend: dict[str, list[str]] = {}
        for name, want in scope.containers.items():
            by_backend.setdefault(want.backend, []).append(name)
        needed = self._template_backends(scope)
        names = sorted(set(by_backend) | {b for bs in needed.values() for b in bs})
        backends = {n: await backend(ctx, n) for n in names}
        fields = {b: frozenset(f for name in names_ for f in FIXED if getattr(scope.containers[name], f) is not None)
                  for b, names_ in by_backend.items()}
        infos, templates = await asyncio.gather(
            asyncio.gather(*(backends[n].inspect(by_backend[n], fields[n]) for n in by_backend)),
            asyncio.gather(*(backends[n].templates() for n in names)),
        )
        found = dict(zip(by_backend, infos, strict=True))
        imported = dict(zip(names, templates, strict=True))
        containers = {}
        for name, want in scope.containers.items():
            info = found[want.backend].get(name)
            if info is not None and info.managed:
                template = scope.templates.get(want.image or "")
                containers[name] = config_of(want.backend, info, want, template.sha256 if template else None)
        result_templates = {}
        for tname, want_t in scope.templates.items():
            copies = [imported[b].get(tname) for b in needed.get(tname, [])]
            if copies and all(c is not None for c in copies):
                shas = {c.sha256 for c in copies if c is not None}
                source = next(c.source for c in copies if c is not None)
                result_templates[tname] = Template.model_construct(
                    source=source or want_t.source,
                    sha256=(shas.pop() if len(shas) == 1 else "differs") if want_t.sha256 is not None else None)
            elif not needed.get(tname):
                result_templates[tname] = Template.model_construct(
                    source=want_t.source, sha256=want_t.sha256)  # imported only where a container needs it
        pods: dict[str, PodConfig] = {}
        if scope.pods:
            infos_p = await (await pod_backend(ctx, "podman")).inspect_pods(sorted(scope.pods))
            for pname, pinfo in infos_p.items():
                if pinfo.managed:
                    pods[pname] = self._pod_config(pinfo)
        return ContainersState.model_construct(templates=result_templates, containers=containers, pods=pods)

    @staticmethod
    def _pod_config(info: Any) -> PodConfig:
        # the manifest recorded at creation; a recorded hash that does not match it (edited labels) forces a recreation
        manifest = info.manifest if pod_hash(info.manifest) == info.manifest_sha256 else {"unreadable": True}
        return PodConfig.model_construct(backend="podman", manifest=manifest or {},
                                         state="running" if info.running else "stopped")

    async def _query_all(self, ctx: Context) -> ContainersState:
        """Every container and template op-dbus manages, in every backend that answers."""
        containers: dict[str, ContainerConfig] = {}
        templates: dict[str, Template] = {}
        for name in sorted(FACTORIES):
            b = await backend(ctx, name)
            b.passive = True  # a read of everything must not start services (machined is bus-activated)
            try:
                await b.ping()
                listed = await b.list()
                infos = await b.inspect([i.name for i in listed if i.managed])
                imported = await b.templates()
            except BackendError:
                continue  # a manager that is not running here has nothing op-dbus manages
            for cname, info in sorted(infos.items()):
                containers.setdefault(cname, config_of(name, info, None))
            for tname, t in sorted(imported.items()):
                templates.setdefault(tname, Template.model_construct(source=t.source or "", sha256=t.sha256))
        pods: dict[str, PodConfig] = {}
        try:
            for pinfo in await (await pod_backend(ctx, "podman")).list_pods():
                pods[pinfo.name] = self._pod_config(pinfo)
                for member in pinfo.containers:
                    containers.pop(member, None)  # a pod's containers (they carry its labels) belong to the pod
        except BackendError:
            pass  # no podman here: no pods
        return ContainersState.model_construct(templates=templates, containers=containers, pods=pods)

    @staticmethod
    def _template_backends(state: ContainersState) -> dict[str, list[str]]:
        """Template name -> the backends whose declared containers use it."""
        needed: dict[str, set[str]] = {}
        for want in state.containers.values():
            if want.state != "absent" and want.image in state.templates:
                needed.setdefault(want.image, set()).add(want.backend)
        return {k: sorted(v) for k, v in needed.items()}

    # -- checking ------------------------------------------------------------------------------------------------

    async def check(self, desired: ContainersState, ctx: Context) -> list[Problem]:
        problems: list[Problem] = []
        for tname, t in desired.templates.items():
            if not os.path.exists(t.source):
                problems.append(Problem(f'plugins.containers.templates["{tname}"].source',
                                        f"no such file or directory: {t.source}"))
            elif t.sha256 and not os.path.isfile(t.source):
                problems.append(Problem(f'plugins.containers.templates["{tname}"].sha256',
                                        "a sha256 can only be checked for a tarball, not a directory"))
        by_backend: dict[str, list[str]] = {}
        imported_by: dict[str, dict[str, Any]] = {}
        for name, want in desired.containers.items():
            by_backend.setdefault(want.backend, []).append(name)
        for bname, names in by_backend.items():
            where = f'plugins.containers.containers["{names[0]}"].backend'
            if bname not in FACTORIES:
                problems.append(Problem(where, f"the {bname} backend is not available; available: "
                                               + ", ".join(sorted(FACTORIES))))
                continue
            b = await backend(ctx, bname)
            try:
                await b.ping()
                infos = await b.inspect(names)
                imported = await b.templates()
            except BackendError as e:
                problems.append(Problem(where, f"the {bname} backend cannot be used: {e}"))
                continue
            for name in names:
                want = desired.containers[name]
                path = f'plugins.containers.containers["{name}"]'
                info = infos.get(name)
                if info is not None and not info.managed:
                    problems.append(Problem(path, f"a {bname} container named {name!r} exists and was not created by "
                                                  "op-dbus; it is left alone: rename one of them"))
                if want.state == "absent":
                    continue
                if want.image not in desired.templates and want.image not in imported:
                    problems.append(Problem(f"{path}.image", f"unknown image {want.image!r}: declare it under "
                                                             "templates, or import it first"))
                problems += [Problem(path, msg) for msg in b.check_spec(spec_to_check(name, want))]
            imported_by[bname] = imported
        problems += await self._check_template_hashes(desired, imported_by)
        if desired.pods:
            try:
                pb = await pod_backend(ctx, "podman")
                existing = await pb.inspect_pods(sorted(desired.pods))
            except BackendError as e:
                return [*problems, Problem("plugins.containers.pods", f"the podman backend cannot be used: {e}")]
            for pname, pinfo in existing.items():
                if not pinfo.managed:
                    problems.append(Problem(f'plugins.containers.pods["{pname}"]',
                                            f"a podman pod named {pname!r} exists and was not created by op-dbus; "
                                            "it is left alone: rename one of them"))
        return problems

    async def _check_template_hashes(self, desired: ContainersState,
                                     imported_by: dict[str, dict[str, Any]]) -> list[Problem]:
        """A template that would be imported must match its declared sha256 now, before anything changes.

        A tarball already imported with that hash into every backend that uses it is not read again.
        """
        problems: list[Problem] = []
        for tname, backends in self._template_backends(desired).items():
            t = desired.templates[tname]
            if t.sha256 is None or not os.path.isfile(t.source):
                continue
            if all(getattr(imported_by.get(b, {}).get(tname), "sha256", None) == t.sha256 for b in backends):
                continue
            got = await asyncio.to_thread(sha256_file, Path(t.source), tty_progress(f"checking {tname}"))
            if got != t.sha256:
                problems.append(Problem(f'plugins.containers.templates["{tname}"].sha256',
                                        f"{t.source} has sha256 {got}, the state expects {t.sha256}"))
        return problems

    # -- planning ------------------------------------------------------------------------------------------------

    def diff(self, desired: ContainersState, current: ContainersState) -> list[Change]:
        changes: list[Change] = []
        needed = self._template_backends(desired)
        for tname, want_t in desired.templates.items():
            have_t = current.templates.get(tname)
            if have_t is None or (want_t.sha256 is not None and have_t.sha256 != want_t.sha256):
                before = None if have_t is None else _dump(have_t)
                changes.append(Change(self.name, f"template:{tname}", "import", before, _dump(want_t),
                                      {"template": tname, "source": want_t.source, "sha256": want_t.sha256,
                                       "backends": needed.get(tname, [])}))
        for name, want in desired.containers.items():
            have = current.containers.get(name)
            spec = spec_of(name, want, desired.templates) if want.state != "absent" else None
            payload: dict[str, Any] = {"backend": want.backend, "spec": spec}
            if want.state == "absent":
                if have is not None:
                    changes.append(Change(self.name, name, "remove", {"state": have.state}, {"state": "absent"},
                                          payload))
                continue
            if have is None:
                after = want.model_dump(mode="json", exclude_none=True)
                changes.append(Change(self.name, name, "create", {"state": "absent"}, after,
                                      {**payload, "secrets": split_env(want.env)[1], "start": want.state == "running"}))
                continue
            differ = [f for f in FIXED if getattr(want, f) is not None
                      and canonical(f, getattr(want, f)) != canonical(f, getattr(have, f))]
            if differ:
                before = {f: _dump(getattr(have, f)) for f in differ} | {"state": have.state}
                after = {f: _dump(getattr(want, f)) for f in differ} | {"state": want.state}
                changes.append(Change(self.name, name, "recreate", before, after,
                                      {**payload, "secrets": split_env(want.env)[1], "start": want.state == "running"}))
            elif have.state != want.state:
                action = "start" if want.state == "running" else "stop"
                changes.append(Change(self.name, name, action, {"state": have.state}, {"state": want.state}, payload))
        changes += self._diff_pods(desired, current)
        changes.sort(key=lambda c: ACTION_ORDER[c.action])
        return changes

    def _diff_pods(self, desired: ContainersState, current: ContainersState) -> list[Change]:
        changes = []
        for name, want in desired.pods.items():
            have = current.pods.get(name)
            obj = f"pod:{name}"
            payload: dict[str, Any] = {"pod": name, "backend": want.backend, "manifest": want.manifest,
                                       "start": want.state == "running"}
            if want.state == "absent":
                if have is not None:
                    changes.append(Change(self.name, obj, "remove", {"state": have.state}, {"state": "absent"},
                                          payload))
            elif have is None:
                changes.append(Change(self.name, obj, "create", {"state": "absent"},
                                      {"state": want.state, "manifest_sha256": pod_hash(want.manifest)}, payload))
            elif pod_hash(have.manifest) != pod_hash(want.manifest):
                changes.append(Change(self.name, obj, "recreate", {"manifest_sha256": pod_hash(have.manifest)},
                                      {"manifest_sha256": pod_hash(want.manifest), "state": want.state}, payload))
            elif have.state != want.state:
                action = "start" if want.state == "running" else "stop"
                changes.append(Change(self.name, obj, action, {"state": have.state}, {"state": want.state}, payload))
        return changes

    # -- applying ------------------------------------------------------------------------------------------------

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        for action in sorted({c.action for c in changes}, key=ACTION_ORDER.__getitem__):
            batch = [c for c in changes if c.action == action]
            if action in ("import", "forget"):
                for c in batch:
                    await self._template(c, ctx, undo)
                continue
            # containers are independent of each other: one action runs for all of them at once
            results = await asyncio.gather(*(self._container(c, ctx, undo) for c in batch), return_exceptions=True)
            failures = [(c, r) for c, r in zip(batch, results, strict=True) if isinstance(r, BaseException)]
            if failures:
                for _, r in failures:
                    if not isinstance(r, (BackendError, ApplyFailed, OSError)):
                        raise r
                text = "; ".join(f"{action} {c.object}: {r}" for c, r in failures)
                raise ApplyFailed(f"containers: {text}")

    async def _template(self, c: Change, ctx: Context, undo: UndoLog) -> None:
        p = c.payload
        name = p["template"]
        if c.action == "forget":
            for bname in p["backends"]:
                await (await backend(ctx, bname)).remove_template(name)
            return
        source = Path(p["source"])
        if p.get("sha256"):
            got = await asyncio.to_thread(sha256_file, source, tty_progress(f"checking {name}"))
            if got != p["sha256"]:
                raise ApplyFailed(f"template {name}: {source} has sha256 {got}, the state expects {p['sha256']}; "
                                  "nothing was imported")
        for bname in p["backends"]:
            b = await backend(ctx, bname)
            existing = (await b.templates()).get(name)
            if existing is not None and (p.get("sha256") is None or existing.sha256 == p["sha256"]):
                continue
            if existing is None:
                undo.record(Change(self.name, c.object, "forget", c.after, None,
                                   {"template": name, "backends": [bname]}))
            elif existing.source:
                undo.record(Change(self.name, c.object, "import", c.after, c.before,
                                   {"template": name, "source": existing.source, "sha256": existing.sha256,
                                    "backends": [bname]}))
            await b.import_template(name, source, p.get("sha256"), tty_progress(f"importing {name} into {bname}"))

    def dump(self, state: ContainersState) -> dict[str, Any]:
        out = super().dump(state)
        if not out.get("pods"):
            out.pop("pods", None)  # a section without pods reads as it did before pods existed
        return out

    async def _pod(self, c: Change, ctx: Context, undo: UndoLog) -> None:
        pb = await pod_backend(ctx, c.payload["backend"])
        name = c.payload["pod"]
        if c.action in ("start", "stop"):
            undo.record(Change(self.name, c.object, "stop" if c.action == "start" else "start", c.after, c.before,
                               c.payload))
            await (pb.start_pod(name) if c.action == "start" else pb.stop_pod(name))
            return
        previous = (await pb.inspect_pods([name])).get(name)
        if previous is not None and not previous.managed:
            raise ApplyFailed(f"podman pod {name} was not created by op-dbus; it is left alone")
        if previous is None:
            if c.action == "remove":
                return
            undo.record(Change(self.name, c.object, "remove", c.after, c.before, {**c.payload}))
            await pb.create_pod(name, c.payload["manifest"], c.payload["start"])
            return
        restore = {**c.payload, "manifest": previous.manifest, "start": previous.running}
        if previous.manifest is None:
            undo.irreversible(c)  # a pod whose manifest record is unreadable cannot be made again
        else:
            undo.record(Change(self.name, c.object, "create" if c.action == "remove" else "recreate", c.after,
                               c.before, restore))
        await pb.remove_pod(name)
        if c.action == "recreate":
            await pb.create_pod(name, c.payload["manifest"], c.payload["start"])

    async def _container(self, c: Change, ctx: Context, undo: UndoLog) -> None:
        if c.payload.get("pod"):
            await self._pod(c, ctx, undo)
            return
        b = await backend(ctx, c.payload["backend"])
        name = c.object
        spec: ContainerSpec | None = c.payload.get("spec")
        if spec is not None:
            spec = with_secrets(spec, c.payload.get("secrets") or {})  # before anything is removed
        if c.action in ("start", "stop"):
            undo.record(Change(self.name, name, "stop" if c.action == "start" else "start", c.after, c.before,
                               c.payload))
            await (b.start(name) if c.action == "start" else b.stop(name))
            return
        previous = (await b.inspect([name])).get(name) if c.action in ("remove", "recreate") else None
        if previous is not None and not previous.managed:
            raise ApplyFailed(f"{b.name} container {name} was not created by op-dbus; it is left alone")
        if c.action == "create" or (c.action == "recreate" and previous is None):
            # a recreation whose container is already gone (a rollback after a failed create) is a creation
            assert spec is not None
            undo.record(Change(self.name, name, "remove", c.after, c.before, {"backend": b.name, "spec": None}))
            await b.create(spec)
            if c.payload.get("start"):
                await b.start(name)
            return
        if previous is None:
            return  # removing what is already gone
        restore = previous.spec()
        undo_payload = {"backend": b.name, "spec": restore, "start": previous.running}
        if c.action == "remove":
            undo.record(Change(self.name, name, "create", c.after, c.before, undo_payload))
            await b.remove(name)
            return
        assert spec is not None
        undo.record(Change(self.name, name, "recreate", c.after, c.before, undo_payload))
        await b.remove(name)
        await b.create(spec)
        if c.payload.get("start"):
            await b.start(name)
