"""Config-file and command-line injection through container names and values: each attempt is refused at check
time (exit 2, the path named), and nothing is written: no LXC config, no .nspawn file, no pct call."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from op_dbus.backends.containers import ContainerSpec, Mount
from op_dbus.backends.containers.lxc import LxcBackend
from op_dbus.backends.containers.nspawn import NspawnBackend, render_settings
from tests.containers.conftest import Lxc, OpDbus, Templates
from tests.containers.test_proxmox import FAKE, PctOracle

SLEEP = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]
NO_SERVICES = {"CONTAINER_HOST": "unix:///nonexistent/podman.sock", "DOCKER_HOST": "unix:///nonexistent/docker.sock",
               "OP_DBUS_BUS": "unix:path=/nonexistent/bus"}


@pytest.fixture(scope="module")
def op(lxc: Lxc, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"), {"OP_DBUS_LXC_PATH": str(lxc.path), **NO_SERVICES},
                  tmp_path_factory.mktemp("files"))


def lxc_section(templates: Templates, name: str = "inj-1", **fields: Any) -> dict[str, Any]:
    return {"templates": {"one": {"source": str(templates.one)}},
            "containers": {name: {"backend": "lxc", "image": "one", "command": SLEEP, **fields}}}


@pytest.mark.parametrize(("fields", "path"), [
    ({"env": {"TZ": "UTC\nlxc.hook.pre-start = /bin/touch /tmp/op-dbus-pwned"}}, "env['TZ']"),
    ({"network": {"bridge": "br0\nlxc.hook.pre-start = /bin/true"}}, "network.bridge"),
    ({"mounts": [{"source": "/srv\nlxc.hook.pre-start = /bin/true", "target": "/mnt"}]}, "mounts[0].source"),
    ({"command": ["/bin/sh", "-c", "true\nlxc.hook.pre-start = /bin/true"]}, "command[2]"),
    ({"env": {"A\u2028B": "1"}}, "not an environment variable name"),
    ({"env": {"A=B": "1"}}, "not an environment variable name"),
])
def test_a_line_injected_into_an_lxc_config_is_refused(op: OpDbus, lxc: Lxc, templates: Templates,
                                                       fields: dict[str, Any], path: str) -> None:
    state = op.state("inject", lxc_section(templates, **fields))
    for command in ("diff", "apply"):
        r = op(command, str(state))
        assert r.code == 2, (command, r.out, r.err)
        assert "plugins.containers.containers.inj-1" in r.err and path in r.err, r.err
    assert not (lxc.path / "inj-1").exists()  # no config written, no container


def test_a_container_name_with_a_trailing_newline_is_refused(op: OpDbus, lxc: Lxc, templates: Templates) -> None:
    r = op("apply", str(op.state("newline-name", lxc_section(templates, name="web-1\n"))))
    assert r.code == 2, r.err
    assert "not a container or template name" in r.err
    assert not any(lxc.path.iterdir())


def test_an_lxc_mount_path_with_whitespace_is_refused(op: OpDbus, lxc: Lxc, templates: Templates) -> None:
    # an fstab field separator: "/srv /etc none bind 0 0" would mount something else
    mounts = [{"source": "/srv /etc", "target": "/mnt"}]
    r = op("apply", str(op.state("space", lxc_section(templates, mounts=mounts))))
    assert r.code == 2, r.err
    assert "lxc.mount.entry is an fstab line" in r.err
    assert not (lxc.path / "inj-1").exists()


def test_nspawn_values_that_would_add_settings_are_refused(tmp_path: Path, templates: Templates) -> None:
    # the model refuses the newline before any service is asked; the backend refuses what Environment= and Bind=
    # would split or unescape
    op = OpDbus(tmp_path / "state", {"OP_DBUS_NSPAWN_ROOT": str(tmp_path / "root"), **NO_SERVICES}, tmp_path)
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"db-1": {"backend": "nspawn", "image": "one", "command": ["/bin/sleep", "60"],
                                       "env": {"MODE": "x\n[Exec]\nPrivileged=yes"}}}}
    r = op("apply", str(op.state("nspawn", section)))
    assert r.code == 2, r.err
    assert "control character U+000A" in r.err and "env['MODE']" in r.err
    backend = NspawnBackend(root=tmp_path / "root")
    spec = ContainerSpec(name="db-1", image="one", command=["/bin/sleep", "60"], env={"A": 'x "y"'},
                         mounts=[Mount("/srv:/etc", "/mnt")])
    problems = backend.check_spec(spec)
    assert any("environment value cannot hold whitespace" in p for p in problems), problems
    assert any("cannot hold ':'" in p for p in problems), problems
    ok = ContainerSpec(name="db-1", image="one", command=["/bin/sleep", "60"], env={"A": "plain"},
                       mounts=[Mount("/srv/www", "/var/www")])
    assert backend.check_spec(ok) == []
    assert "Environment=A=plain" in render_settings(ok).splitlines()


@pytest.fixture(scope="module")
def pve(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The pct stand-in (as test_proxmox uses it), with its own state: a call it logs was made by these tests."""
    d = Path(tmp_path_factory.mktemp("pve"))
    (d / "bin").mkdir()
    (d / "cache").mkdir()
    pct = d / "bin" / "pct"
    pct.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    pct.chmod(0o755)
    return {"PATH": f"{d / 'bin'}:{os.environ['PATH']}", "FAKE_PCT_STATE": str(d / "state.json"),
            "OP_DBUS_PVE_TEMPLATE_DIR": str(d / "cache")}


@pytest.fixture(scope="module")
def pve_op(pve: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(tmp_path_factory.mktemp("state"), {**pve, **NO_SERVICES, "OP_DBUS_LXC_PATH": "/nonexistent/lxc"},
                  tmp_path_factory.mktemp("files"))


@pytest.mark.parametrize(("fields", "needle"), [
    ({"network": {"bridge": "vmbr0,tag=5"}}, "network.bridge: Proxmox property strings cannot hold"),
    ({"mounts": [{"source": "/srv/www,mp=/etc,ro=0", "target": "/var/www"}]}, "Proxmox property strings cannot hold"),
])
def test_commas_in_pct_options_are_refused(pve_op: OpDbus, pve: dict[str, str], templates: Templates,
                                           fields: dict[str, Any], needle: str) -> None:
    section = {"templates": {"one": {"source": str(templates.one)}},
               "containers": {"pve-inj": {"backend": "proxmox", "image": "one", "boot": True, **fields}}}
    r = pve_op("apply", str(pve_op.state("pct", section)))
    assert r.code == 2, r.err
    assert needle in r.err, r.err
    assert not [c for c in PctOracle(pve).calls() if c[0] == "create"]


def test_lxc_check_spec_accepts_plain_values(lxc: Lxc) -> None:
    spec = ContainerSpec(name="ok-1", image="one", command=SLEEP, env={"A": "two words"},
                         mounts=[Mount("/srv/www", "/var/www", True)])
    assert LxcBackend(lxc.path).check_spec(spec) == []
