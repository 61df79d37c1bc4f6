"""op-dbus installed inside the lab system from wheels and run there as root, as a user would run it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.helpers import STACK, STACK_UNITS, systemctl

UNITS = STACK_UNITS


@pytest.fixture(scope="module")
def op_dbus(lab: Any) -> str:
    exe = lab.install_op_dbus()
    state = lab.root / "etc/op-dbus"
    state.mkdir(mode=0o755, exist_ok=True)
    (state / "state.json").write_text(json.dumps(STACK, indent=2))
    (state / "state.json").chmod(0o600)
    return str(exe)


def run(lab: Any, *argv: str) -> Any:
    return lab.run(list(argv), check=False)


def test_help_and_version(lab: Any, op_dbus: str) -> None:
    r = run(lab, op_dbus, "--help")
    assert r.returncode == 0 and "Exit codes" in r.stdout
    assert run(lab, op_dbus, "--version").stdout.strip().startswith("op-dbus, version")


def test_the_deployment_guide_flow(lab: Any, op_dbus: str) -> None:
    d = run(lab, op_dbus, "diff", "/etc/op-dbus/state.json")
    assert d.returncode == 3 and "app-backend.service" in d.stdout
    a = run(lab, op_dbus, "apply", "/etc/op-dbus/state.json")
    assert a.returncode == 0, a.stderr
    assert systemctl(lab, "is-active", *UNITS) == ["active"] * len(UNITS)
    assert systemctl(lab, "is-enabled", *UNITS) == ["enabled"] * len(UNITS)
    # the default state dir is /var/lib/op-dbus, as the deployment guide says
    listing = run(lab, op_dbus, "-o", "json", "blockchain", "list")
    assert [b["kind"] for b in json.loads(listing.stdout)] == ["genesis", "apply"]
    assert (lab.root / "var/lib/op-dbus").is_dir()
    assert run(lab, op_dbus, "verify").returncode == 0
    assert run(lab, op_dbus, "verify", "--full").returncode == 0
    lab.run(["systemctl", "stop", "app-worker.service"])
    v = run(lab, op_dbus, "verify", "--current")
    assert v.returncode == 3 and "app-worker.service" in v.stdout


def test_introspect_round_trip_inside(lab: Any, op_dbus: str) -> None:
    script = f"umask 077; {op_dbus} introspect > /root/intro.json && {op_dbus} -o json apply /root/intro.json"
    r = lab.run(["sh", "-c", script], check=False)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["changes"] == []
    # the same through a pipe, as the deployment guide's adoption step reads
    piped = lab.run(["sh", "-c", f"{op_dbus} introspect | {op_dbus} -o json apply -"], check=False)
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["changes"] == []
