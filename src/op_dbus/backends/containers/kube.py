"""Pods from Kubernetes manifests: the subset op-dbus accepts, its hash, and the backend contract for pods.

A pod is declared as a Kubernetes `Pod` manifest, or a `Deployment` with one replica (its pod template is
what runs). Only the fields below are accepted, everywhere else a field is refused by its path, so that a
manifest never means more on a real cluster than it did here.

The backend contract (`PodBackend`) is what a pod engine must offer: create a pod from the manifest carrying
op-dbus's labels, read back which pods it made (labels: managed marker and the manifest's hash), start, stop and
remove one by name. `PodmanPods` speaks podman's libpod API (`/libpod/play/kube`, `/libpod/pods/...`).

A Kubernetes API backend would implement the same five calls against a cluster: `create` as a POST of the Pod
(or the Deployment) to `/api/v1/namespaces/NS/pods` (`/apis/apps/v1/.../deployments`), `inspect` as a GET with
the label selector `op-dbus.managed=true` reading `op-dbus.manifest-sha256` back, `remove` as a DELETE
(waiting for the pod to go), `stop`/`start` as scaling the Deployment to 0/1 (a bare Pod cannot be stopped on a
cluster: it would refuse `state: stopped` in `check_manifest`). It needs the API server's URL, a CA bundle and a
bearer token or client certificate (files checked like every trusted file), a namespace, and watch support
(`?watch=1`) for the agent's events.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from op_dbus.backends.containers.http import NotFound, UnixHTTP

MANAGED = "op-dbus.managed"
MANIFEST_SHA256 = "op-dbus.manifest-sha256"
MANIFEST = "op-dbus.manifest"  # the declared manifest itself, so that `introspect` can write it back

# field -> allowed sub-fields (None: a leaf value; a dict: an object; [dict]: a list of objects)
_CONTAINER: dict[str, Any] = {
    "name": None, "image": None, "command": None, "args": None, "workingDir": None,
    "env": [{"name": None, "value": None}],
    "ports": [{"containerPort": None, "hostPort": None, "protocol": None, "name": None}],
    "volumeMounts": [{"name": None, "mountPath": None, "readOnly": None}],
}
_POD_SPEC: dict[str, Any] = {
    "containers": [_CONTAINER],
    "restartPolicy": None, "hostname": None,
    "volumes": [{"name": None, "hostPath": {"path": None, "type": None}}],
}
_METADATA: dict[str, Any] = {"name": None, "labels": None, "annotations": None}
POD: dict[str, Any] = {"apiVersion": None, "kind": None, "metadata": _METADATA, "spec": _POD_SPEC}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": None, "kind": None, "metadata": _METADATA,
    "spec": {"replicas": None, "selector": {"matchLabels": None},
             "template": {"metadata": _METADATA, "spec": _POD_SPEC}},
}


def _walk(value: Any, allowed: Any, path: str, problems: list[str]) -> None:
    if allowed is None:
        return
    if isinstance(allowed, list):
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list")
            return
        for i, item in enumerate(value):
            _walk(item, allowed[0], f"{path}[{i}]", problems)
        return
    if not isinstance(value, dict):
        problems.append(f"{path}: expected an object")
        return
    for key in value:
        if key not in allowed:
            problems.append(f"{path}.{key}: unsupported field (op-dbus runs pods with: {', '.join(sorted(allowed))})")
        else:
            _walk(value[key], allowed[key], f"{path}.{key}", problems)


def check_manifest(manifest: dict[str, Any]) -> list[str]:
    """Every problem of a manifest, each with its path under `manifest`; [] when op-dbus can run it."""
    kind = manifest.get("kind")
    problems: list[str] = []
    if kind == "Pod":
        if manifest.get("apiVersion") != "v1":
            problems.append("manifest.apiVersion: a Pod is apiVersion v1")
        _walk(manifest, POD, "manifest", problems)
        spec = manifest.get("spec") or {}
    elif kind == "Deployment":
        if manifest.get("apiVersion") != "apps/v1":
            problems.append("manifest.apiVersion: a Deployment is apiVersion apps/v1")
        _walk(manifest, DEPLOYMENT, "manifest", problems)
        replicas = (manifest.get("spec") or {}).get("replicas", 1)
        if replicas != 1:
            problems.append(f"manifest.spec.replicas: only 1 replica runs on one machine, got {replicas!r}")
        spec = ((manifest.get("spec") or {}).get("template") or {}).get("spec") or {}
    else:
        return [f"manifest.kind: a Pod or a Deployment, got {kind!r}"]
    if not spec.get("containers"):
        problems.append("manifest: the pod has no containers")
    for i, c in enumerate(spec.get("containers") or []):
        if isinstance(c, dict) and not (c.get("name") and c.get("image")):
            problems.append(f"manifest...containers[{i}]: a container needs a name and an image")
    return problems


def as_pod(name: str, manifest: dict[str, Any], labels: dict[str, str]) -> dict[str, Any]:
    """The Pod to run: a Deployment's template, named `name`, with op-dbus's labels added."""
    if manifest.get("kind") == "Deployment":
        template = manifest["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": dict(template.get("metadata") or {}),
               "spec": template["spec"]}
    else:
        pod = {**manifest, "metadata": dict(manifest.get("metadata") or {})}
    pod["metadata"]["name"] = name
    pod["metadata"]["labels"] = {**(pod["metadata"].get("labels") or {}), **labels}
    return pod


def manifest_hash(manifest: dict[str, Any]) -> str:
    """What decides recreation: the manifest as declared, in a canonical JSON form."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass
class PodInfo:
    name: str
    managed: bool
    running: bool
    manifest_sha256: str | None
    manifest: dict[str, Any] | None
    containers: list[str] = field(default_factory=list)  # the engine's names of the pod's containers


class PodBackend(ABC):
    """What a pod engine offers op-dbus; see the module docstring for a Kubernetes API implementation."""

    name: ClassVar[str]

    @abstractmethod
    async def inspect_pods(self, names: list[str]) -> dict[str, PodInfo]: ...

    @abstractmethod
    async def list_pods(self) -> list[PodInfo]: ...

    @abstractmethod
    async def create_pod(self, name: str, manifest: dict[str, Any], start: bool) -> None: ...

    @abstractmethod
    async def start_pod(self, name: str) -> None: ...

    @abstractmethod
    async def stop_pod(self, name: str) -> None: ...

    @abstractmethod
    async def remove_pod(self, name: str) -> None: ...


def _info(name: str, labels: dict[str, str] | None, state: str, containers: list[str] | None = None) -> PodInfo:
    labels = labels or {}
    manifest = None
    if labels.get(MANIFEST):
        try:
            manifest = json.loads(labels[MANIFEST])
        except ValueError:
            manifest = None
    return PodInfo(name, labels.get(MANAGED) == "true", state.lower() in ("running", "degraded"),
                   labels.get(MANIFEST_SHA256), manifest, containers or [])


class PodmanPods(PodBackend):
    """Pods through podman's libpod API: play kube creates them, the pods endpoints run and remove them."""

    name = "podman"

    def __init__(self, http: UnixHTTP, api: str) -> None:
        self.http = http
        self.api = api

    async def inspect_pods(self, names: list[str]) -> dict[str, PodInfo]:
        found = {}
        for name in names:
            try:
                data = (await self.http.request("GET", f"{self.api}/pods/{name}/json")).json()
            except NotFound:
                continue
            found[name] = _info(name, data.get("Labels"), str(data.get("State") or ""))
        return found

    async def list_pods(self) -> list[PodInfo]:
        rows = (await self.http.request("GET", f"{self.api}/pods/json",
                                        params={"filters": {"label": [f"{MANAGED}=true"]}})).json() or []
        return [_info(row["Name"], row.get("Labels"), str(row.get("Status") or ""),
                      [str(c.get("Names")) for c in row.get("Containers") or []]) for row in rows]

    async def create_pod(self, name: str, manifest: dict[str, Any], start: bool) -> None:
        labels = {MANAGED: "true", MANIFEST_SHA256: manifest_hash(manifest),
                  MANIFEST: json.dumps(manifest, sort_keys=True, separators=(",", ":"))}
        pod = as_pod(name, manifest, labels)
        # JSON is YAML: play kube reads it as is. No network: podman must not make bridges or firewall rules here.
        await self.http.request("POST", f"{self.api}/play/kube", params={"start": start, "network": ["none"]},
                                body=json.dumps(pod).encode(), content_type="application/yaml", timeout=120)

    async def start_pod(self, name: str) -> None:
        await self.http.request("POST", f"{self.api}/pods/{name}/start", ok=(304,))

    async def stop_pod(self, name: str) -> None:
        await self.http.request("POST", f"{self.api}/pods/{name}/stop", params={"t": 10}, ok=(304,), timeout=60)

    async def remove_pod(self, name: str) -> None:
        await self.http.request("DELETE", f"{self.api}/pods/{name}", params={"force": True}, ok=(404,), timeout=60)
