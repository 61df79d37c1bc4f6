"""The `containers` section's model (templates, containers, their fixed settings) and its conversion to backend specs."""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from op_dbus.backends.containers import (
    ContainerInfo,
    ContainerSpec,
    Mount,
    split_image,
    valid_name,
)
from op_dbus.plugin import Section
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


def template_backends(state: ContainersState) -> dict[str, list[str]]:
    """Template name -> the backends whose declared containers use it."""
    needed: dict[str, set[str]] = {}
    for want in state.containers.values():
        if want.state != "absent" and want.image in state.templates:
            needed.setdefault(want.image, set()).add(want.backend)
    return {k: sorted(v) for k, v in needed.items()}
