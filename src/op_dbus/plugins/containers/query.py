"""Read containers and templates from their backends, in the form a state file writes them."""

from __future__ import annotations

import asyncio

from op_dbus.errors import BackendError
from op_dbus.plugin import Context

from . import pods
from .backends import FACTORIES, backend
from .model import (
    FIXED,
    ContainerConfig,
    ContainersState,
    Template,
    config_of,
    template_backends,
)


async def query(ctx: Context, scope: ContainersState | None = None) -> ContainersState:
    if scope is None:
        return await query_all(ctx)
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
    return ContainersState.model_construct(templates=result_templates, containers=containers,
                                           pods=await pods.query_scoped(ctx, scope))


async def query_all(ctx: Context) -> ContainersState:
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
    found_pods = await pods.query_all(ctx, containers)
    return ContainersState.model_construct(templates=templates, containers=containers, pods=found_pods)
