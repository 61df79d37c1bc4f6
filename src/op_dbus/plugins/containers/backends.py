"""Which backend client serves a container, opened once per command from the settings' endpoints."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from op_dbus.backends.containers import (
    ContainerBackend,
    Progress,
)
from op_dbus.errors import InvalidInput
from op_dbus.plugin import Context

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
