"""The `containers` plugin: containers on pluggable backends (podman, docker, nspawn, lxc, proxmox), from templates.

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
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from op_dbus.backends.containers import (
    ContainerBackend,
    ContainerSpec,
    Progress,
    sha256_file,
)
from op_dbus.errors import ApplyFailed, BackendError, InvalidInput, Problem
from op_dbus.plugin import Change, Context, Plugin, UndoLog

from .diff import diff as compute_diff
from .model import (
    ACTION_ORDER,
    FIXED,
    ContainerConfig,
    ContainersState,
    Template,
    config_of,
    format_size,
    parse_size,
    spec_of,
    spec_to_check,
    template_backends,
    with_secrets,
)

__all__ = ["ContainersPlugin", "ContainersState", "config_of", "format_size", "parse_size", "spec_of", "template_backends"]


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
        needed = template_backends(scope)
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
        return ContainersState.model_construct(templates=result_templates, containers=containers)

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
        return ContainersState.model_construct(templates=templates, containers=containers)

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
        return problems

    async def _check_template_hashes(self, desired: ContainersState,
                                     imported_by: dict[str, dict[str, Any]]) -> list[Problem]:
        """A template that would be imported must match its declared sha256 now, before anything changes.

        A tarball already imported with that hash into every backend that uses it is not read again.
        """
        problems: list[Problem] = []
        for tname, backends in template_backends(desired).items():
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
        return compute_diff(desired, current)

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

    async def _container(self, c: Change, ctx: Context, undo: UndoLog) -> None:
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
