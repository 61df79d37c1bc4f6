"""Podman through its libpod REST API on a unix socket (`podman system service`); the podman CLI is never run."""

from __future__ import annotations

import asyncio
import builtins
import json
import os
import time
from pathlib import Path
from typing import Any

from op_dbus.backends.containers import (
    ENV_KEYS,
    IMAGE,
    MANAGED,
    TEMPLATE,
    TEMPLATE_SHA256,
    TEMPLATE_SOURCE,
    ContainerBackend,
    ContainerInfo,
    ContainerSpec,
    Mount,
    Progress,
    TemplateInfo,
    as_tarball,
    file_chunks,
    netattach,
)
from op_dbus.backends.containers.http import NotFound, UnixHTTP

DEFAULT_SOCKET = "/run/podman/podman.sock"
API = "/v4.0.0/libpod"
CPU_PERIOD = 100_000
LIST_FIELDS = frozenset({"image", "command"})  # what the container listing carries besides name, labels, state


def socket_from_env(variable: str, default: str) -> str:
    """A unix socket path from a CONTAINER_HOST / DOCKER_HOST style variable (unix:///path), else the default."""
    value = os.environ.get(variable, "")
    if value.startswith("unix://"):
        return value[len("unix://"):]
    return value or default


def template_ref(name: str) -> str:
    return f"localhost/op-dbus-template/{name}:latest"


def template_changes(name: str, sha256: str | None, source: Path) -> list[str]:
    """Dockerfile LABEL instructions recording what a template image was imported from."""
    labels = {TEMPLATE: name, TEMPLATE_SOURCE: str(source)}
    if sha256:
        labels[TEMPLATE_SHA256] = sha256
    return [f"LABEL {key}={json.dumps(value)}" for key, value in labels.items()]


def info_from_labels(name: str, labels: dict[str, str] | None, running: bool) -> ContainerInfo:
    labels = labels or {}
    keys = labels.get(ENV_KEYS, "")
    return ContainerInfo(name=name, managed=labels.get(MANAGED) == "true", running=running,
                         image=labels.get(IMAGE), env_keys=[k for k in keys.split(",") if k])


def split_env(pairs: list[str] | None) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        key, _, value = pair.partition("=")
        env[key] = value
    return env


def info_from_inspect(name: str, data: dict[str, Any]) -> ContainerInfo:
    """The settings both podman and the Docker Engine API report in a container's inspect JSON."""
    config, host = data.get("Config") or {}, data.get("HostConfig") or {}
    info = info_from_labels(name, config.get("Labels"), bool((data.get("State") or {}).get("Running")))
    info.command = config.get("Cmd")
    info.env = split_env(config.get("Env"))
    info.mounts = sorted((Mount(m["Source"], m["Destination"], not m.get("RW", True))
                          for m in data.get("Mounts") or [] if m.get("Type") == "bind"), key=lambda m: m.target)
    info.autostart = (host.get("RestartPolicy") or {}).get("Name") == "always"
    info.memory = host.get("Memory") or None
    if host.get("NanoCpus"):
        info.cpus = host["NanoCpus"] / 1e9
    elif host.get("CpuQuota") and host.get("CpuPeriod"):
        info.cpus = host["CpuQuota"] / host["CpuPeriod"]
    return info


class EngineAPIBackend(ContainerBackend):
    """What podman's API and the Docker Engine API share: listings, inspect, events and template images."""

    api: str  # the URL prefix of the API version spoken
    http: UnixHTTP

    async def events(self, since: float, until: float | None = None) -> list[dict[str, Any]]:
        params = {"stream": False, "since": str(int(since)), "until": str(int(until or time.time() + 1)),
                  "filters": {"type": ["container"]}}
        rows = (await self.http.request("GET", f"{self.api}/events", params=params)).json_lines()
        return [{"time": row.get("time"), "name": (row.get("Actor") or {}).get("Attributes", {}).get("name"),
                 "action": row.get("Action") or row.get("status")} for row in rows]

    async def templates(self) -> dict[str, TemplateInfo]:
        params = {"filters": {"label": [TEMPLATE]}}
        rows = (await self.http.request("GET", f"{self.api}/images/json", params=params)).json()
        found = {}
        for row in rows or []:
            labels = row.get("Labels") or {}
            name = labels.get(TEMPLATE)
            # podman names an image under Names, the Docker API under RepoTags
            if name and template_ref(name) in (row.get("Names") or row.get("RepoTags") or []):
                found[name] = TemplateInfo(name, labels.get(TEMPLATE_SHA256), labels.get(TEMPLATE_SOURCE),
                                           template_ref(name))
        return found

    async def inspect(self, names: list[str], fields: frozenset[str] | None = None) -> dict[str, ContainerInfo]:
        # one listing answers for many containers when only what it carries is wanted; podman serves
        # an inspect in about 1 ms, so fifty of them cost more than the listing
        if fields is not None and fields <= LIST_FIELDS and len(names) > 1:
            wanted = set(names)
            return {info.name: info for info in await self.list() if info.name in wanted}
        found = await asyncio.gather(*(self._inspect(name) for name in names))
        return {info.name: info for info in found if info is not None}

    async def _inspect(self, name: str) -> ContainerInfo | None:
        try:
            data = (await self.http.request("GET", f"{self.api}/containers/{name}/json")).json()
        except NotFound:
            return None
        info = info_from_inspect(name, data)
        info.native = {"id": data.get("Id"), "status": (data.get("State") or {}).get("Status"),
                       "image": (data.get("Config") or {}).get("Image")}
        await self._complete(info, data)
        return info

    async def _complete(self, info: ContainerInfo, data: dict[str, Any]) -> None:
        """What one API reports beyond the shared inspect fields."""


class PodmanBackend(EngineAPIBackend):
    name = "podman"
    api = API

    def __init__(self, socket: str | None = None, *, timeout: float = 90.0) -> None:
        self.socket = socket or socket_from_env("CONTAINER_HOST", DEFAULT_SOCKET)
        self.http = UnixHTTP(self.socket, service="podman", timeout=timeout,
                             hint=f"start the API service: `podman system service --time=0 unix://{self.socket}` "
                                  "(or enable podman.socket); CONTAINER_HOST=unix://PATH names another socket")

    async def ping(self) -> None:
        await self.http.request("GET", f"{API}/_ping", timeout=10)

    # -- reading -----------------------------------------------------------------------------------------------

    async def list(self) -> list[ContainerInfo]:
        rows = (await self.http.request("GET", f"{API}/containers/json", params={"all": True})).json() or []
        found = []
        for row in rows:
            info = info_from_labels(row["Names"][0], row.get("Labels"), row.get("State") == "running")
            info.command = row.get("Command")
            found.append(info)
        return found

    async def _complete(self, info: ContainerInfo, data: dict[str, Any]) -> None:
        info.native["image"] = data.get("ImageName")
        network_mode = (data.get("HostConfig") or {}).get("NetworkMode", "")
        if info.managed and network_mode.endswith(str(netattach.netns_path(info.name))):
            info.bridge, info.addresses = await asyncio.to_thread(netattach.read, info.name)

    # -- changing ----------------------------------------------------------------------------------------------

    def check_spec(self, spec: ContainerSpec) -> builtins.list[str]:
        problems = []
        if spec.boot:
            problems.append("podman containers run one command; `boot` is for nspawn and lxc")
        if spec.addresses and not spec.bridge:
            problems.append("network.ipv4 needs network.bridge: the address is set on the container's end of the veth")
        return problems

    async def create(self, spec: ContainerSpec) -> None:
        body: dict[str, Any] = {
            "name": spec.name,
            "image": template_ref(spec.image),
            "labels": spec.labels(),
            "env": spec.env,
            # no network: podman must not create bridges or firewall rules on the host
            "netns": {"nsmode": "none"},
            "restart_policy": "always" if spec.autostart else "no",
            "mounts": [{"type": "bind", "source": m.source, "destination": m.target,
                        "options": ["rbind", "ro"] if m.read_only else ["rbind"]} for m in spec.mounts],
        }
        if spec.command:
            body["command"] = spec.command
        limits: dict[str, Any] = {}
        if spec.memory:
            limits["memory"] = {"limit": spec.memory}
        if spec.cpus:
            limits["cpu"] = {"quota": int(spec.cpus * CPU_PERIOD), "period": CPU_PERIOD}
        if limits:
            body["resource_limits"] = limits
        if spec.bridge:
            # the container runs in a namespace op-dbus made, with a veth from the bridge already in it
            path = await asyncio.to_thread(netattach.attach, spec.name, spec.bridge, spec.addresses)
            body["netns"] = {"nsmode": "path", "value": str(path)}
        try:
            await self.http.request("POST", f"{API}/containers/create", json_body=body)
        except BaseException:
            if spec.bridge:
                await asyncio.to_thread(netattach.detach, spec.name)
            raise

    async def start(self, name: str) -> None:
        await self.http.request("POST", f"{API}/containers/{name}/start", ok=(304,))

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        await self.http.request("POST", f"{API}/containers/{name}/stop", params={"timeout": int(timeout)},
                                ok=(304,), timeout=timeout + 30)

    async def remove(self, name: str) -> None:
        await self.http.request("DELETE", f"{API}/containers/{name}", params={"force": True, "timeout": 10},
                                ok=(404,), timeout=60)
        if netattach.netns_path(name).exists():
            await asyncio.to_thread(netattach.detach, name)

    async def import_template(self, name: str, source: Path, sha256: str | None,
                              progress: Progress | None = None) -> TemplateInfo:
        with as_tarball(source) as tarball:
            params = {"reference": template_ref(name), "changes": template_changes(name, sha256, source)}
            await self.http.request("POST", f"{API}/images/import", params=params,
                                    body=file_chunks(tarball, progress), content_type="application/x-tar")
        return TemplateInfo(name, sha256, str(source), template_ref(name))

    async def remove_template(self, name: str) -> None:
        await self.http.request("DELETE", f"{API}/images/{template_ref(name)}", ok=(404,))

    async def close(self) -> None:
        await self.http.close()
