"""Pods: a Kubernetes Pod (or one-replica Deployment) manifest converged through a backend's pod API (podman's
libpod /play/kube today; see op_dbus.backends.containers.kube.PodBackend for what a Kubernetes backend needs)."""

from __future__ import annotations

from typing import Any

from op_dbus.errors import ApplyFailed, BackendError, Problem
from op_dbus.plugin import Change, Context, UndoLog

from .backends import backend
from .model import ContainersState, PodConfig

PLUGIN = "containers"


async def pod_backend(ctx: Context, name: str) -> Any:
    """The pod side of a backend (see op_dbus.backends.containers.kube.PodBackend); podman's libpod API today."""
    from op_dbus.backends.containers.kube import PodmanPods

    b: Any = await backend(ctx, name)
    return PodmanPods(b.http, b.api)


def pod_hash(manifest: dict[str, Any] | None) -> str | None:
    from op_dbus.backends.containers.kube import manifest_hash

    return manifest_hash(manifest) if manifest is not None else None


def pod_config(info: Any) -> PodConfig:
    # the manifest recorded at creation; a recorded hash that does not match it (edited labels) forces a recreation
    manifest = info.manifest if pod_hash(info.manifest) == info.manifest_sha256 else {"unreadable": True}
    return PodConfig.model_construct(backend="podman", manifest=manifest or {},
                                     state="running" if info.running else "stopped")


async def query_scoped(ctx: Context, scope: ContainersState) -> dict[str, PodConfig]:
    pods: dict[str, PodConfig] = {}
    if scope.pods:
        infos = await (await pod_backend(ctx, "podman")).inspect_pods(sorted(scope.pods))
        for name, info in infos.items():
            if info.managed:
                pods[name] = pod_config(info)
    return pods


async def query_all(ctx: Context, containers: dict[str, Any]) -> dict[str, PodConfig]:
    """Every pod op-dbus made; a pod's containers (they carry its labels) are taken out of `containers`."""
    pods: dict[str, PodConfig] = {}
    try:
        for info in await (await pod_backend(ctx, "podman")).list_pods():
            pods[info.name] = pod_config(info)
            for member in info.containers:
                containers.pop(member, None)
    except BackendError:
        pass  # no podman here: no pods
    return pods


async def check(desired: ContainersState, ctx: Context) -> list[Problem]:
    if not desired.pods:
        return []
    try:
        existing = await (await pod_backend(ctx, "podman")).inspect_pods(sorted(desired.pods))
    except BackendError as e:
        return [Problem("plugins.containers.pods", f"the podman backend cannot be used: {e}")]
    return [Problem(f'plugins.containers.pods["{name}"]',
                    f"a podman pod named {name!r} exists and was not created by op-dbus; it is left alone: rename one "
                    "of them")
            for name, info in existing.items() if not info.managed]


def diff(desired: ContainersState, current: ContainersState) -> list[Change]:
    changes = []
    for name, want in desired.pods.items():
        have = current.pods.get(name)
        obj = f"pod:{name}"
        payload: dict[str, Any] = {"pod": name, "backend": want.backend, "manifest": want.manifest,
                                   "start": want.state == "running"}
        if want.state == "absent":
            if have is not None:
                changes.append(Change(PLUGIN, obj, "remove", {"state": have.state}, {"state": "absent"}, payload))
        elif have is None:
            changes.append(Change(PLUGIN, obj, "create", {"state": "absent"},
                                  {"state": want.state, "manifest_sha256": pod_hash(want.manifest)}, payload))
        elif pod_hash(have.manifest) != pod_hash(want.manifest):
            changes.append(Change(PLUGIN, obj, "recreate", {"manifest_sha256": pod_hash(have.manifest)},
                                  {"manifest_sha256": pod_hash(want.manifest), "state": want.state}, payload))
        elif have.state != want.state:
            action = "start" if want.state == "running" else "stop"
            changes.append(Change(PLUGIN, obj, action, {"state": have.state}, {"state": want.state}, payload))
    return changes


async def apply(c: Change, ctx: Context, undo: UndoLog) -> None:
    pb = await pod_backend(ctx, c.payload["backend"])
    name = c.payload["pod"]
    if c.action in ("start", "stop"):
        undo.record(Change(PLUGIN, c.object, "stop" if c.action == "start" else "start", c.after, c.before,
                           c.payload))
        await (pb.start_pod(name) if c.action == "start" else pb.stop_pod(name))
        return
    previous = (await pb.inspect_pods([name])).get(name)
    if previous is not None and not previous.managed:
        raise ApplyFailed(f"podman pod {name} was not created by op-dbus; it is left alone")
    if previous is None:
        if c.action == "remove":
            return
        undo.record(Change(PLUGIN, c.object, "remove", c.after, c.before, {**c.payload}))
        await pb.create_pod(name, c.payload["manifest"], c.payload["start"])
        return
    restore = {**c.payload, "manifest": previous.manifest, "start": previous.running}
    if previous.manifest is None:
        undo.irreversible(c)  # a pod whose manifest record is unreadable cannot be made again
    else:
        undo.record(Change(PLUGIN, c.object, "create" if c.action == "remove" else "recreate", c.after,
                           c.before, restore))
    await pb.remove_pod(name)
    if c.action == "recreate":
        await pb.create_pod(name, c.payload["manifest"], c.payload["start"])
