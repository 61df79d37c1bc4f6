"""A Docker engine through the Docker Engine API (v1.41) on its unix socket; podman's compatible API serves it too."""

from __future__ import annotations

import builtins
import contextlib
import json
from pathlib import Path
from typing import Any

from op_dbus.backends.containers import (
    ContainerInfo,
    ContainerSpec,
    Progress,
    TemplateInfo,
    as_tarball,
    file_chunks,
)
from op_dbus.backends.containers.http import UnixHTTP
from op_dbus.backends.containers.podman import (
    EngineAPIBackend,
    info_from_labels,
    socket_from_env,
    template_changes,
    template_ref,
)
from op_dbus.errors import BackendError

DEFAULT_SOCKET = "/var/run/docker.sock"
API = "/v1.41"
COMMAND = "op-dbus.command"  # the argv given at create, as JSON


class DockerBackend(EngineAPIBackend):
    name = "docker"
    api = API

    def __init__(self, socket: str | None = None, *, timeout: float = 90.0) -> None:
        self.socket = socket or socket_from_env("DOCKER_HOST", DEFAULT_SOCKET)
        self.http = UnixHTTP(self.socket, service="docker", timeout=timeout,
                             hint=f"start the Docker engine (`systemctl start docker`) or a compatible API on "
                                  f"unix://{self.socket}; DOCKER_HOST=unix://PATH names another socket")

    async def ping(self) -> None:
        await self.http.request("GET", "/_ping", timeout=10)

    async def list(self) -> list[ContainerInfo]:
        rows = (await self.http.request("GET", f"{API}/containers/json", params={"all": 1})).json() or []
        found = []
        for row in rows:
            labels = row.get("Labels") or {}
            info = info_from_labels(row["Names"][0].lstrip("/"), labels, row.get("State") == "running")
            # the listing joins the command into one string; a container's command never changes after create,
            # so the argv recorded then is exact
            with contextlib.suppress(ValueError, TypeError):
                info.command = json.loads(labels[COMMAND]) if COMMAND in labels else None
            found.append(info)
        return found

    def check_spec(self, spec: ContainerSpec) -> builtins.list[str]:
        problems = []
        if spec.boot:
            problems.append("docker containers run one command; `boot` is for nspawn and lxc")
        if spec.bridge or spec.addresses:
            problems.append("network attachment is not implemented for docker (its containers have no network)")
        return problems

    async def create(self, spec: ContainerSpec) -> None:
        host: dict[str, Any] = {
            "NetworkMode": "none",  # the engine must not wire the container into a bridge of its own
            "RestartPolicy": {"Name": "always" if spec.autostart else "no"},
            "Mounts": [{"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
                       for m in spec.mounts],
        }
        if spec.memory:
            host["Memory"] = spec.memory
        if spec.cpus:
            host["NanoCpus"] = int(spec.cpus * 1e9)
        labels = spec.labels() | ({COMMAND: json.dumps(spec.command)} if spec.command else {})
        body: dict[str, Any] = {"Image": template_ref(spec.image), "Labels": labels,
                                "Env": [f"{k}={v}" for k, v in sorted(spec.env.items())], "HostConfig": host}
        if spec.command:
            body["Cmd"] = spec.command
        await self.http.request("POST", f"{API}/containers/create", params={"name": spec.name}, json_body=body)

    async def start(self, name: str) -> None:
        await self.http.request("POST", f"{API}/containers/{name}/start", ok=(304,))

    async def stop(self, name: str, timeout: float = 10.0) -> None:
        await self.http.request("POST", f"{API}/containers/{name}/stop", params={"t": int(timeout)}, ok=(304,),
                                timeout=timeout + 30)

    async def remove(self, name: str) -> None:
        await self.http.request("DELETE", f"{API}/containers/{name}", params={"force": True}, ok=(404,), timeout=60)

    async def import_template(self, name: str, source: Path, sha256: str | None,
                              progress: Progress | None = None) -> TemplateInfo:
        with as_tarball(source) as tarball:
            params = {"fromSrc": "-", "repo": template_ref(name).rsplit(":", 1)[0], "tag": "latest",
                      "changes": template_changes(name, sha256, source)}
            reply = await self.http.request("POST", f"{API}/images/create", params=params,
                                            body=file_chunks(tarball, progress), content_type="application/x-tar")
        # the engine reports a failed import inside a 200 progress stream
        for message in reply.json_lines():
            if isinstance(message, dict) and message.get("error"):
                raise BackendError(f"docker: importing template {name}: {message['error']}")
        return TemplateInfo(name, sha256, str(source), template_ref(name))

    async def remove_template(self, name: str) -> None:
        await self.http.request("DELETE", f"{API}/images/{template_ref(name)}", ok=(404,))

    async def close(self) -> None:
        await self.http.close()
