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
from pathlib import Path
from typing import Any

from op_dbus.backends.containers import sha256_file
from op_dbus.errors import BackendError, Problem
from op_dbus.plugin import Change, Context, Plugin, UndoLog

from . import apply as applier
from . import pods, query
from .backends import FACTORIES, backend, tty_progress
from .diff import diff as compute_diff
from .model import (
    ContainerConfig,
    ContainersState,
    PodConfig,
    Template,
    config_of,
    format_size,
    parse_size,
    spec_of,
    spec_to_check,
    template_backends,
)

__all__ = ["ContainerConfig", "ContainersPlugin", "ContainersState", "PodConfig", "Template", "config_of", "format_size",
           "parse_size", "spec_of", "spec_to_check", "template_backends", "tty_progress"]


class ContainersPlugin(Plugin[ContainersState]):
    name = "containers"
    model = ContainersState
    # after the network (a bridge must exist before a container joins it) and before the units that use them
    order = 40

    # -- reading -------------------------------------------------------------------------------------------------

    async def query(self, ctx: Context, scope: ContainersState | None = None) -> ContainersState:
        return await query.query(ctx, scope)

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
        problems += await pods.check(desired, ctx)
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

    def dump(self, state: ContainersState) -> dict[str, Any]:
        out = super().dump(state)
        if not out.get("pods"):
            out.pop("pods", None)  # a section without pods reads as it did before pods existed
        return out

    # -- applying ------------------------------------------------------------------------------------------------

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        await applier.apply(changes, ctx, undo)
