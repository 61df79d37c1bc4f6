"""The foundation's promise on a real systemd: apply converges, records, re-applies as a no-op, and detects drift."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import STACK, STACK_UNITS, OpDbus, systemctl, write_state

UNITS = STACK_UNITS


@pytest.fixture(scope="module")
def op(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    return OpDbus(lab.bus_address, tmp_path_factory.mktemp("state"))


@pytest.fixture(scope="module")
def stack_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_state(tmp_path_factory.mktemp("files") / "stack.json", STACK)


def test_diff_shows_what_the_lab_lacks(op: OpDbus, stack_file: Path) -> None:
    r = op("-o", "json", "diff", str(stack_file))
    assert r.code == 3, r.err
    plan = {(c["object"], c["action"]) for c in r.json()["changes"]}
    # the lab boots with its own app units installed but neither enabled nor started
    assert {("app-backend.service", "enable"), ("app-backend.service", "start"),
            ("app-worker.service", "enable"), ("app-worker.service", "start")} <= plan


def test_apply_converges_and_records_a_block(lab: Any, op: OpDbus, stack_file: Path) -> None:
    r = op("apply", str(stack_file))
    assert r.code == 0, r.err
    assert systemctl(lab, "is-active", *UNITS) == ["active"] * len(UNITS)
    assert systemctl(lab, "is-enabled", *UNITS) == ["enabled"] * len(UNITS)
    blocks = op.blocks()
    assert [b["kind"] for b in blocks] == ["genesis", "apply"]
    assert blocks[1]["prev"] != blocks[0]["prev"]
    shown = op("-o", "json", "blockchain", "show", "1").json()
    assert {(c["object"], c["action"]) for c in shown["changes"]} >= {("app-backend.service", "start")}
    assert shown["state"]["plugins"]["systemd"]["units"]["app-worker.service"] == {"active_state": "active",
                                                                                   "enabled": True}


def test_second_apply_changes_nothing_but_is_recorded(op: OpDbus, stack_file: Path) -> None:
    before = len(op.blocks())
    r = op("-o", "json", "apply", str(stack_file))
    assert r.code == 0, r.err
    assert r.json()["changes"] == []
    blocks = op.blocks()
    assert len(blocks) == before + 1 and blocks[-1]["kind"] == "apply" and blocks[-1]["change_count"] == 0


def test_introspect_reapplies_as_a_noop(op: OpDbus, tmp_path: Path) -> None:
    r = op("introspect")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["version"] == 1 and "nginx.service" in doc["plugins"]["systemd"]["units"]
    f = write_state(tmp_path / "intro.json", doc)
    d = op("-o", "json", "diff", str(f))
    assert d.code == 0 and d.json()["changes"] == [], d.out
    a = op("-o", "json", "apply", str(f))
    assert a.code == 0 and a.json()["changes"] == [], a.err


def test_verify_current_reports_a_unit_stopped_behind_our_back(lab: Any, op: OpDbus, stack_file: Path) -> None:
    assert op("verify", "--current").code == 0
    op("apply", str(stack_file))
    lab.run(["systemctl", "stop", "nginx.service"])
    r = op("-o", "json", "verify", "--current")
    assert r.code == 3
    drift = r.json()["drift"]
    assert [(c["object"], c["before"], c["after"]) for c in drift] == [
        ("nginx.service", {"active_state": "inactive"}, {"active_state": "active"})]
    text = op("verify")
    assert text.code == 3 and "nginx.service" in text.out
    assert op("apply", str(stack_file)).code == 0
    assert op("verify", "--current").code == 0


def test_verify_full_passes_on_an_untouched_log(op: OpDbus) -> None:
    r = op("-o", "json", "verify", "--full")
    assert r.code == 0, r.out + r.err
    assert r.json()["ok"] is True


@pytest.mark.parametrize("what", ["header", "state"])
def test_editing_a_stored_block_fails_verify_full_naming_it(op: OpDbus, tmp_path_factory: pytest.TempPathFactory,
                                                            what: str) -> None:
    import shutil
    import sqlite3

    # tamper with a copy of the state dir, so the other tests keep their log
    copy = tmp_path_factory.mktemp("tampered") / "state"
    shutil.copytree(op.state_dir, copy)
    copy.chmod(0o700)
    tampered = OpDbus(op.bus_address, copy)
    assert len(tampered.blocks()) >= 3
    db = sqlite3.connect(copy / "ledger.db")
    leaf = json.loads(db.execute("SELECT leaf FROM blocks WHERE idx = 1").fetchone()[0])
    if what == "header":
        leaf["summary"] = "nothing to see here"
        db.execute("UPDATE blocks SET leaf = ? WHERE idx = 1", (json.dumps(leaf).encode(),))
    else:
        state_hash = bytes.fromhex(leaf["state_hash"])
        doc = json.loads(db.execute("SELECT data FROM blobs WHERE hash = ?", (state_hash,)).fetchone()[0])
        doc["plugins"]["systemd"]["units"]["nginx.service"]["enabled"] = False
        db.execute("UPDATE blobs SET data = ? WHERE hash = ?", (json.dumps(doc).encode(), state_hash))
    db.commit()
    db.close()
    r = tampered("-o", "json", "verify", "--full")
    assert r.code == 3, r.out + r.err
    report = r.json()
    assert report["ok"] is False and report["first_bad"] == 1, report
    assert "FAILED at block 1" in tampered("verify", "--full").out


def test_rollback_to_the_genesis_block_restores_the_first_state(lab: Any, op: OpDbus) -> None:
    dry = op("-o", "json", "rollback", "--to-block", "0", "--dry-run")
    assert dry.code == 0, dry.err
    planned = {(c["object"], c["action"]) for c in dry.json()["changes"]}
    assert {("app-backend.service", "stop"), ("app-backend.service", "disable")} <= planned
    assert dry.json()["proof"]["index"] == 0 and dry.json()["block"] is None
    assert systemctl(lab, "is-active", "app-backend.service") == ["active"]  # a dry run changes nothing

    before = len(op.blocks())
    r = op("rollback", "--to-block", "0")
    assert r.code == 0, r.err
    assert "is in the signed log" in r.out
    assert systemctl(lab, "is-active", "app-backend.service", "app-worker.service") == ["inactive", "inactive"]
    assert systemctl(lab, "is-enabled", "app-backend.service", "app-worker.service") == ["disabled", "disabled"]
    blocks = op.blocks()
    assert len(blocks) == before + 1 and blocks[-1]["kind"] == "rollback"
    assert blocks[-1]["meta"]["to_block"] == 0 and blocks[-1]["state_hash"] == blocks[0]["state_hash"]
    assert op("verify", "--current").code == 0
    assert op("verify", "--full").code == 0


def test_rollback_to_a_missing_block_is_refused(op: OpDbus) -> None:
    r = op("rollback", "--to-block", "999")
    assert r.code == 2 and "no block 999" in r.err
