"""Safe apply on the real lab system: one transaction across net and systemd, fault injection, kill -9,
commit-confirm, locking and probes. op-dbus runs inside the lab as root, as it would on a server."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from tests.e2e.helpers import install_unit, systemctl
from tests.testing_switch import switch_on_testing

STATE = "/etc/op-dbus/state.json"
BROKEN = "[Service]\nType=oneshot\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n"
FLAKY = "[Service]\nType=simple\nExecStart=/bin/sh -c 'sleep 0.05'\n[Install]\nWantedBy=multi-user.target\n"
NET = {"interfaces": [
    {"name": "txbr0", "type": "linux-bridge", "state": "up", "ports": ["txv0"],
     "ipv4": {"enabled": True, "address": [{"ip": "198.18.7.1", "prefix": 24}]}},
    {"name": "txv0", "type": "veth", "state": "up", "veth": {"peer": "txv1"}},
    {"name": "txovs0", "type": "ovs-bridge", "ports": []},
]}


def document(units: dict[str, Any], net: dict[str, Any] | None = None, probes: list[Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"version": 1, "plugins": {"systemd": {"units": units}}}
    if net is not None:
        doc["plugins"]["net"] = net
    if probes is not None:
        doc["probes"] = probes
    return doc


@pytest.fixture(scope="module")
def op(lab: Any) -> Any:
    exe = lab.install_op_dbus()
    (lab.root / "etc/op-dbus").mkdir(exist_ok=True)
    install_unit(lab, "broken.service", BROKEN)
    install_unit(lab, "flaky.service", FLAKY)

    testing = switch_on_testing(lambda argv: lab.run(argv))  # fault points work only with the switch on

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Any:
        return lab.run([exe, *args], check=False, env={**testing, **env} if env else None, timeout=timeout)

    run.exe = exe  # type: ignore[attr-defined]
    return run


def write(lab: Any, doc: dict[str, Any], path: str = STATE) -> str:
    f = lab.root / path.lstrip("/")
    f.write_text(json.dumps(doc))
    f.chmod(0o600)
    return path


def links(lab: Any) -> set[str]:
    return {line.split()[1].rstrip(":").split("@")[0] for line in str(lab.run(["ip", "-o", "link"]).stdout).splitlines()}


def ovs_bridges(lab: Any) -> set[str]:
    return set(str(lab.run(["ovs-vsctl", "list-br"]).stdout).split())


def kinds(op: Any) -> list[str]:
    r = op("-o", "json", "blockchain", "list")
    assert r.returncode == 0, r.stderr
    return [b["kind"] for b in json.loads(r.stdout)]


def assert_log_verifies(op: Any) -> None:
    r = op("verify", "--full")
    assert r.returncode == 0, r.stdout + r.stderr


def assert_pristine(lab: Any) -> None:
    assert systemctl(lab, "is-active", "app-backend.service", "app-worker.service") == ["inactive", "inactive"]
    assert systemctl(lab, "is-enabled", "app-backend.service", "app-worker.service") == ["disabled", "disabled"]
    assert not {"txbr0", "txv0", "txv1", "txovs0"} & links(lab)
    assert "txovs0" not in ovs_bridges(lab)


GOOD_UNITS = {"app-backend.service": {"active_state": "active", "enabled": True},
              "app-worker.service": {"active_state": "active", "enabled": True}}


def test_failing_last_unit_rolls_back_every_plugin(lab: Any, op: Any) -> None:
    units = {**GOOD_UNITS, "broken.service": {"active_state": "active", "enabled": True}}
    r = op("-o", "json", "apply", write(lab, document(units, NET)))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "broken.service" in r.stderr and "rolled back" in r.stderr
    assert_pristine(lab)
    assert systemctl(lab, "is-enabled", "broken.service") == ["disabled"]
    assert kinds(op) == ["genesis", "failed"]
    shown = json.loads(op("-o", "json", "blockchain", "show", "1").stdout)
    assert shown["meta"]["rolled_back"] is True and "broken.service" in shown["meta"]["error"]
    assert {c["object"] for c in shown["changes"]} >= {"interface txbr0", "app-backend.service"}
    assert_log_verifies(op)


def test_result_that_never_verifies_is_rolled_back(lab: Any, op: Any) -> None:
    units = {**GOOD_UNITS, "flaky.service": {"active_state": "active"}}
    r = op("apply", write(lab, document(units, NET)))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "verification failed" in r.stderr and "flaky.service" in r.stderr
    assert_pristine(lab)
    assert kinds(op)[-1] == "failed"
    assert_log_verifies(op)


def test_probe_that_passed_before_and_fails_after_rolls_back(lab: Any, op: Any) -> None:
    # nginx answers on port 80 before; a state that stops it breaks that probe, so the change is not kept
    units = {"nginx.service": {"active_state": "inactive"}, **GOOD_UNITS}
    probes = [{"tcp": "127.0.0.1:80", "timeout": 1}, {"tcp": "127.0.0.1:9", "timeout": 1}]
    r = op("apply", write(lab, document(units, probes=probes)))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "tcp 127.0.0.1:80" in r.stderr and "127.0.0.1:9" not in r.stderr  # port 9 never answered: not required
    assert systemctl(lab, "is-active", "nginx.service") == ["active"]
    assert_pristine(lab)


@pytest.mark.parametrize("fault", ["before-apply", "after-plugin:net", "after-plugin:systemd", "before-append"])
def test_kill_9_mid_apply_is_recovered_by_the_next_command(lab: Any, op: Any, fault: str) -> None:
    before = kinds(op)
    r = op("apply", write(lab, document(GOOD_UNITS, NET)), env={"OP_DBUS_FAULTS": fault})
    assert r.returncode == -9 or r.returncode == 137, (r.returncode, r.stderr)
    assert (lab.root / "var/lib/op-dbus/transaction.json").stat().st_size > 0
    listing = op("blockchain", "list")  # any command that opens the state dir finishes the job
    assert listing.returncode == 0 and "recovered an interrupted transaction" in listing.stderr
    assert (lab.root / "var/lib/op-dbus/transaction.json").stat().st_size == 0
    assert_pristine(lab)
    assert kinds(op) == [*before, "failed"]
    assert_log_verifies(op)


def test_kill_9_after_the_block_is_written_keeps_the_change(lab: Any, op: Any) -> None:
    r = op("apply", write(lab, document(GOOD_UNITS)), env={"OP_DBUS_FAULTS": "after-append"})
    assert r.returncode in (-9, 137)
    listing = op("blockchain", "list")
    assert "recovered an interrupted transaction" in listing.stderr and "had completed" in listing.stderr
    assert systemctl(lab, "is-active", "app-backend.service", "app-worker.service") == ["active", "active"]
    assert kinds(op)[-1] == "apply"
    assert_log_verifies(op)
    assert op("apply", write(lab, document({u: {"active_state": "inactive", "enabled": False} for u in GOOD_UNITS}))) \
        .returncode == 0
    assert_pristine(lab)


def test_unconfirmed_change_reverts_even_when_op_dbus_is_killed(lab: Any, op: Any) -> None:
    doc = write(lab, document(GOOD_UNITS, NET))
    r = op("apply", "--confirm-timeout", "3", doc, env={"OP_DBUS_FAULTS": "confirm-pending"})
    assert r.returncode in (-9, 137), r.stderr  # killed right after applying, as a dropped SSH session would
    assert systemctl(lab, "is-active", "app-backend.service") == ["active"]
    assert "txbr0" in links(lab)
    deadline = time.monotonic() + 30
    while (lab.root / "var/lib/op-dbus/transaction.json").stat().st_size and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_pristine(lab)
    assert kinds(op)[-2:] == ["apply", "rollback"]
    assert_log_verifies(op)


def test_kill_9_between_recording_and_arming_the_confirmation_still_reverts(lab: Any, op: Any) -> None:
    doc = write(lab, document(GOOD_UNITS))
    r = op("apply", "--confirm-timeout", "3", doc, env={"OP_DBUS_FAULTS": "after-append"})
    assert r.returncode in (-9, 137), r.stderr
    assert systemctl(lab, "is-active", "app-backend.service") == ["active"]
    deadline = time.monotonic() + 30
    while (lab.root / "var/lib/op-dbus/transaction.json").stat().st_size and time.monotonic() < deadline:
        time.sleep(0.2)
    assert_pristine(lab)
    assert kinds(op)[-2:] == ["apply", "rollback"]
    assert_log_verifies(op)


def test_confirm_keeps_the_change_and_abort_reverts_it(lab: Any, op: Any) -> None:
    r = op("apply", "--confirm-timeout", "60", write(lab, document(GOOD_UNITS)))
    assert r.returncode == 0 and "op-dbus confirm" in r.stdout
    second = op("apply", write(lab, document(GOOD_UNITS)))
    assert second.returncode == 5 and "awaits confirmation" in second.stderr
    assert op("confirm").returncode == 0
    assert kinds(op)[-1] == "confirm"
    assert systemctl(lab, "is-active", "app-backend.service") == ["active"]
    off = document({u: {"active_state": "inactive", "enabled": False} for u in GOOD_UNITS})
    assert op("apply", "--confirm-timeout", "60", write(lab, off)).returncode == 0
    assert systemctl(lab, "is-active", "app-backend.service") == ["inactive"]
    a = op("abort")
    assert a.returncode == 0, a.stderr
    assert systemctl(lab, "is-active", "app-backend.service", "app-worker.service") == ["active", "active"]
    assert kinds(op)[-1] == "rollback"
    assert op("apply", write(lab, off)).returncode == 0
    assert_pristine(lab)
    assert_log_verifies(op)


def test_two_concurrent_applies_never_interleave(lab: Any, op: Any) -> None:
    slow = {"slow.service": {"active_state": "active"}}
    install_unit(lab, "slow.service", "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sleep 2\n")
    first = subprocess.Popen(["nsenter", "-t", str(lab.leader), "-a", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                              op.exe, "apply", write(lab, document(slow), "/etc/op-dbus/slow.json")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "pid" not in (lab.root / "var/lib/op-dbus/lock").read_text() and time.monotonic() < deadline:
            time.sleep(0.02)
        second = op("apply", write(lab, document(GOOD_UNITS)))
        assert second.returncode == 5, second.stderr
        assert "another op-dbus holds" in second.stderr and "pid" in second.stderr
        waited = op("apply", "--wait", "30", write(lab, document({"slow.service": {"active_state": "active"}})))
        assert waited.returncode == 0, waited.stderr
    finally:
        _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert_log_verifies(op)


def test_access_denied_explains_the_policy_fix(lab: Any, op: Any) -> None:
    lab.run(["install", "-d", "-o", "labuser", "-m", "0700", "/tmp/labstate"])
    doc = document({"app-backend.service": {"active_state": "active"}})
    write(lab, doc, "/tmp/labstate/state.json")
    lab.run(["chown", "labuser", "/tmp/labstate/state.json"])
    r = lab.run(["runuser", "-u", "labuser", "--", op.exe, "--state-dir", "/tmp/labstate/db", "apply",
                 "/tmp/labstate/state.json"], check=False)
    assert r.returncode == 4, r.stdout + r.stderr
    assert "access denied" in r.stderr.lower() and "D-Bus policy" in r.stderr
    assert systemctl(lab, "is-active", "app-backend.service") == ["inactive"]


def test_unit_that_dies_inside_the_settle_window_is_rolled_back(lab: Any, op: Any) -> None:
    # Type=simple is "active" once forked; this one exits 0.1 s later, while the settle window (counted from the
    # end of its start job) is still open: the apply must not verify, and everything is undone.
    install_unit(lab, "dies-soon.service",
                 "[Service]\nType=simple\nExecStart=/bin/sh -c 'sleep 0.1; exit 1'\n[Install]\nWantedBy=multi-user.target\n")
    units = {**GOOD_UNITS, "dies-soon.service": {"active_state": "active", "enabled": True}}
    r = op("apply", write(lab, document(units)))
    assert r.returncode == 4, r.stdout + r.stderr
    assert "verification failed" in r.stderr and "dies-soon.service" in r.stderr
    assert systemctl(lab, "is-enabled", "dies-soon.service") == ["disabled"]
    assert kinds(op)[-1] == "failed"
