"""A backend whose manager is not there is a clear error at check time, and nothing is changed."""

from __future__ import annotations

import pytest

from tests.containers.conftest import OpDbus, Templates

IDLE = ["/bin/sh", "-c", "sleep 1"]


@pytest.mark.parametrize(("backend", "env", "message"), [
    ("lxc", {"OP_DBUS_LXC_PATH": "/nonexistent/lxcpath"}, "the lxcpath /nonexistent/lxcpath does not exist"),
    ("nspawn", {"OP_DBUS_BUS": "unix:path=/nonexistent/system_bus_socket"}, "cannot connect to the D-Bus system bus"),
    ("proxmox", {"OP_DBUS_PCT": "/nonexistent/pct"}, "`pct` is not installed"),
])
def test_manager_not_there(backend: str, env: dict[str, str], message: str, templates: Templates,
                           tmp_path_factory: pytest.TempPathFactory) -> None:
    state_dir = tmp_path_factory.mktemp("state")
    op = OpDbus(state_dir, env, tmp_path_factory.mktemp("files"))
    extra = {"boot": True} if backend == "proxmox" else {"command": IDLE}
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"x-1": {"backend": backend, "image": "one", **extra}}}
    r = op("apply", str(op.state("down", section)))
    assert r.code == 2, r.err
    assert f'containers["x-1"].backend: the {backend} backend cannot be used' in r.err and message in r.err
    assert "nothing was changed" in r.err
