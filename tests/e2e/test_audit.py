"""Auditing a real history: applies on the lab's systemd, then export, the auditor's check, search, prove, compaction."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from op_dbus import audit_verify
from tests.e2e.helpers import STACK, OpDbus, systemctl, write_state

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def op(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> OpDbus:
    op = OpDbus(lab.bus_address, tmp_path_factory.mktemp("state"))
    files = tmp_path_factory.mktemp("files")
    assert op("apply", str(write_state(files / "stack.json", STACK))).code == 0
    stopped = copy.deepcopy(STACK)
    stopped["plugins"]["systemd"]["units"]["postgresql.service"] = {"active_state": "inactive", "enabled": False}
    r = op("apply", str(write_state(files / "no-db.json", stopped)))
    assert r.code == 0, r.err
    assert op("apply", str(write_state(files / "stack2.json", STACK))).code == 0
    return op


def auditor(tmp: Path, export: Path, key: Path) -> subprocess.CompletedProcess[str]:
    """The verifier as an auditor runs it: one copied file, `python -I`, nothing else of op-dbus."""
    lone = tmp / "auditor"
    lone.mkdir(exist_ok=True)
    shutil.copy(audit_verify.__file__, lone / "audit_verify.py")
    return subprocess.run([sys.executable, "-I", "audit_verify.py", str(export), "--key", str(key)], cwd=lone,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_history_exports_and_the_auditor_verifies_it(op: OpDbus, tmp_path: Path) -> None:
    r = op("export-blockchain")
    assert r.code == 0, r.err
    export = tmp_path / "audit.json"
    export.write_text(r.out)
    key = tmp_path / "host.pub"
    shutil.copy(op.state_dir / "host.pub", key)
    doc = json.loads(r.out)
    kinds = [json.loads(b["header"])["kind"] for b in doc["blocks"]]
    assert kinds == ["genesis", "apply", "apply", "apply"]
    ok = auditor(tmp_path, export, key)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok: blocks 0..3 verified" in ok.stdout and "4 changes and 4 state records" in ok.stdout

    # the auditor names an edited block: "postgresql was never stopped"
    state = json.loads(doc["blocks"][2]["state"])
    state["plugins"]["systemd"]["units"]["postgresql.service"]["active_state"] = "active"
    doc["blocks"][2]["state"] = json.dumps(state, sort_keys=True, separators=(",", ":"))
    export.write_text(json.dumps(doc))
    bad = auditor(tmp_path, export, key)
    assert bad.returncode == 3 and bad.stdout.startswith("FAILED at block 2")
    assert "block 2: its state record does not match the state_hash" in bad.stdout


def test_search_finds_when_the_database_was_stopped(op: OpDbus) -> None:
    r = op("-o", "json", "blockchain", "search", "when was the database stopped")
    assert r.code == 0, r.err
    hits = r.json()["hits"]
    assert hits[0]["index"] == 2 and hits[0]["verified"] is True, hits
    shown = op("-o", "json", "blockchain", "show", "2").json()
    assert ("postgresql.service", "stop") in {(c["object"], c["action"]) for c in shown["changes"]}


def test_prove_a_block_of_the_real_history(op: OpDbus) -> None:
    r = op("-o", "json", "blockchain", "prove", "1")
    assert r.code == 0, r.err
    body = r.json()
    steps = [bytes.fromhex(h) for h in body["proof"]]
    assert audit_verify.root_from_proof(1, body["tree_size"], bytes.fromhex(body["leaf_hash"]), steps).hex() == body["root"]
    assert "signature verified" in op("blockchain", "prove", "1").out


def test_after_compaction_proofs_hold_verify_current_passes_and_old_rollback_is_refused(lab: Any, op: OpDbus) -> None:
    assert op("blockchain", "compact").code == 0
    assert op("verify", "--full").code == 0
    assert op("verify", "--current").code == 0  # the last block keeps its state, proved against the checkpoint
    refused = op("rollback", "--to-block", "2")
    assert refused.code == 2 and "compacted away" in refused.err
    assert systemctl(lab, "is-active", "postgresql.service") == ["active"]  # nothing was touched
    export = op("export-blockchain")
    assert export.code == 0
    # block 1 recorded the same state as block 3 (the same stack applied): one shared record, kept for block 3
    blocks = json.loads(export.out)["blocks"]
    assert [b["state"] is None for b in blocks] == [True, False, True, False]
    assert json.loads(blocks[1]["header"])["state_hash"] == json.loads(blocks[3]["header"])["state_hash"]
