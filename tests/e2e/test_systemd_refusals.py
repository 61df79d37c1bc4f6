"""Bad input is refused whole (exit 2), names every problem with its path, changes nothing and writes no block."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import STACK, OpDbus, install_unit, systemctl, write_state


@pytest.fixture(scope="module")
def op(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(lab.bus_address, tmp_path_factory.mktemp("state"))


def assert_untouched(lab: Any, op: OpDbus) -> None:
    assert systemctl(lab, "is-active", "app-backend.service", "app-worker.service") == ["inactive", "inactive"]
    assert systemctl(lab, "is-enabled", "app-backend.service", "app-worker.service") == ["disabled", "disabled"]
    assert not (op.state_dir / "ledger.db").exists() or op.blocks() == []


def test_unknown_key_and_wrong_type(lab: Any, op: OpDbus, tmp_path: Path) -> None:
    doc: Any = copy.deepcopy(STACK)
    doc["plugins"]["systemd"]["units"]["nginx.service"]["enabled"] = "yes"
    doc["plugins"]["systemd"]["units"]["app-backend.service"]["restart"] = True
    r = op("-o", "json", "apply", str(write_state(tmp_path / "bad.json", doc)))
    assert r.code == 2
    paths = {p["path"]: p["message"] for p in r.json()["problems"]}
    assert paths == {'plugins.systemd.units["nginx.service"].enabled': "expected boolean, got string",
                     'plugins.systemd.units["app-backend.service"].restart': "unknown key"}
    assert_untouched(lab, op)


def test_bad_json(lab: Any, op: OpDbus, tmp_path: Path) -> None:
    f = tmp_path / "broken.json"
    f.write_text(json.dumps(STACK)[:-3])
    f.chmod(0o600)
    r = op("apply", str(f))
    assert r.code == 2 and "invalid JSON" in r.err
    assert_untouched(lab, op)


def test_nonexistent_unit_is_refused_before_anything_changes(lab: Any, op: OpDbus, tmp_path: Path) -> None:
    doc: Any = copy.deepcopy(STACK)
    doc["plugins"]["systemd"]["units"]["no-such-thing.service"] = {"active_state": "active"}
    r = op("-o", "json", "apply", str(write_state(tmp_path / "ghost.json", doc)))
    assert r.code == 2, r.err
    assert r.json()["problems"] == [{"path": 'plugins.systemd.units["no-such-thing.service"]',
                                     "message": "no such unit on this system (no unit file is loaded under that name)"}]
    assert_untouched(lab, op)


def test_enabling_a_static_unit_is_refused(lab: Any, op: OpDbus, tmp_path: Path) -> None:
    install_unit(lab, "static-demo.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    doc = {"version": 1, "plugins": {"systemd": {"units": {"static-demo.service": {"enabled": True}}}}}
    r = op("apply", str(write_state(tmp_path / "static.json", doc)))
    assert r.code == 2 and "cannot be enabled" in r.err
    assert_untouched(lab, op)


def test_group_writable_state_file_is_refused(lab: Any, op: OpDbus, tmp_path: Path) -> None:
    f = write_state(tmp_path / "loose.json", STACK)
    f.chmod(0o666)
    r = op("apply", str(f))
    assert r.code == 2 and "writable by group or others" in r.err
    assert_untouched(lab, op)


def test_failed_start_is_rolled_back_and_recorded(lab: Any, op: OpDbus, tmp_path: Path) -> None:
    install_unit(lab, "broken.service",
                 "[Service]\nType=oneshot\nExecStart=/bin/false\n[Install]\nWantedBy=multi-user.target\n")
    doc: Any = copy.deepcopy(STACK)
    doc["plugins"]["systemd"]["units"]["broken.service"] = {"active_state": "active", "enabled": True}
    r = op("-o", "json", "apply", str(write_state(tmp_path / "fails.json", doc)))
    assert r.code == 4, r.out + r.err
    assert "broken.service" in r.err and "rolled back" in r.err
    # everything the apply did before the failure is undone
    assert systemctl(lab, "is-active", "app-backend.service", "app-worker.service") == ["inactive", "inactive"]
    assert systemctl(lab, "is-enabled", "app-backend.service", "app-worker.service", "broken.service") == \
        ["disabled"] * 3
    blocks = op.blocks()
    assert [b["kind"] for b in blocks] == ["genesis", "failed"]
    assert op("verify", "--full").code == 0


def test_missing_bus_says_what_to_do(tmp_path: Path) -> None:
    op = OpDbus("unix:path=/nonexistent/bus", tmp_path)
    r = op("query", "systemd")
    assert r.code == 1 and "cannot connect to the D-Bus system bus" in r.err and "hint:" in r.err
