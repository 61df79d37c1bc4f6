"""The auditing commands as a user runs them: export-blockchain, blockchain export/prove/archive/compact/search."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from ledger_helpers import fill

from op_dbus import audit_verify
from op_dbus.ledger import Ledger

SRC = Path(audit_verify.__file__).parent.parent


def op(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OP_DBUS_BUS": "unix:path=/nonexistent/bus"}
    return subprocess.run([sys.executable, "-m", "op_dbus", "--state-dir", str(state), *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    with Ledger.open(path) as log:
        fill(log, 12)
    return path


def auditor(export: Path, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SRC / "op_dbus" / "audit_verify.py"), str(export), "--key",
                           str(state / "host.pub")], capture_output=True, text=True, timeout=60, check=False)


def test_export_blockchain_to_stdout_verifies(state: Path, tmp_path: Path) -> None:
    r = op(state, "export-blockchain")
    assert r.returncode == 0, r.stderr
    export = tmp_path / "audit.json"
    export.write_text(r.stdout)
    doc = json.loads(r.stdout)
    assert doc["range"] == {"first": 0, "last": 11} and doc["tree_size"] == 12
    a = auditor(export, state)
    assert a.returncode == 0 and a.stdout.startswith("ok: blocks 0..11"), a.stdout + a.stderr


def test_blockchain_export_range_to_a_file(state: Path, tmp_path: Path) -> None:
    out = tmp_path / "part.json"
    r = op(state, "blockchain", "export", "--range", "3-6", "--no-records", "--file", str(out))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert [b["index"] for b in doc["blocks"]] == [3, 4, 5, 6] and doc["blocks"][0]["state"] is None
    assert auditor(out, state).returncode == 0
    bad = op(state, "blockchain", "export", "--range", "5-40")
    assert bad.returncode == 2 and "the log has 12 block(s)" in bad.stderr


def test_prove_prints_the_audit_path_in_text_and_json(state: Path) -> None:
    text = op(state, "blockchain", "prove", "5")
    assert text.returncode == 0, text.stderr
    assert "block 5 (apply" in text.stdout and "is leaf 5 of the signed tree of 12 blocks" in text.stdout
    assert "signature verified" in text.stdout and "\u2014 op-dbus/" in text.stdout
    j = op(state, "-o", "json", "blockchain", "prove", "5").stdout
    body = json.loads(j)
    with Ledger.open(state) as log:
        assert body["root"] == log.root().hex() and body["proof"] == [h.hex() for h in log.inclusion_proof(5)]
        assert body["verified"] is True and body["leaf_hash"] == log.headers(5, 6)[0].leaf_hash.hex()
    # the JSON alone is enough to check it
    steps = [bytes.fromhex(h) for h in body["proof"]]
    implied = audit_verify.root_from_proof(5, body["tree_size"], bytes.fromhex(body["leaf_hash"]), steps)
    assert implied.hex() == body["root"]
    missing = op(state, "blockchain", "prove", "12")
    assert missing.returncode == 2 and "no block 12" in missing.stderr


def test_prove_refuses_a_tampered_block(state: Path) -> None:
    conn = sqlite3.connect(state / "ledger.db")
    leaf = json.loads(conn.execute("SELECT leaf FROM blocks WHERE idx = 4").fetchone()[0])
    leaf["summary"] = "edited"
    conn.execute("UPDATE blocks SET leaf = ? WHERE idx = 4", (json.dumps(leaf).encode(),))
    conn.commit()
    conn.close()
    r = op(state, "blockchain", "prove", "4")
    assert r.returncode == 1 and "inclusion proof for leaf 4 does not lead to the root" in r.stderr


def test_compact_then_rollback_to_a_compacted_block_is_refused(state: Path) -> None:
    r = op(state, "-o", "json", "blockchain", "compact")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dropped"] == 11
    refused = op(state, "rollback", "--to-block", "3")
    assert refused.returncode == 2
    assert "block 3's state snapshot was compacted away" in refused.stderr and "roll back to a later block" in refused.stderr
    assert op(state, "verify", "--full").returncode == 0
    shown = op(state, "blockchain", "show", "3")
    assert shown.returncode == 0 and "state: compacted" in shown.stdout


def test_archive_command_writes_a_file_the_auditor_accepts(state: Path) -> None:
    r = op(state, "-o", "json", "blockchain", "archive", "--before", "2999-01-01")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert (body["first"], body["last"]) == (0, 11)
    assert auditor(Path(body["path"]), state).returncode == 0
    shown = op(state, "blockchain", "show", "2")
    assert "archived (only their hash is kept)" in shown.stdout
    assert op(state, "blockchain", "archive", "--before", "yesterday").returncode == 2


def test_verify_current_refuses_a_last_block_without_a_valid_checkpoint(state: Path) -> None:
    conn = sqlite3.connect(state / "ledger.db")
    signed = conn.execute("SELECT note FROM checkpoints WHERE size = 12").fetchone()[0]
    text, sig = signed.rsplit(" ", 1)
    forged = text + " " + ("A" if sig[10] != "A" else "B").join([sig[:10], sig[11:]])
    conn.execute("UPDATE checkpoints SET note = ? WHERE size = 12", (forged,))
    conn.commit()
    conn.close()
    r = op(state, "verify", "--current")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "FAILED: block 11, the last block, is not covered by a validly signed checkpoint" in r.stdout
    j = op(state, "-o", "json", "verify", "--current")
    assert j.returncode == 3 and json.loads(j.stdout)["ok"] is False


def test_search_command_json(state: Path) -> None:
    r = op(state, "-o", "json", "blockchain", "search", "step", "7")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    assert body["mode"] == "fts5" and body["hits"][0]["index"] == 7 and body["hits"][0]["verified"] is True
    text = op(state, "blockchain", "search", "--limit", "2", "step 7")
    assert text.returncode == 0 and text.stdout.splitlines()[1].split()[0] == "7"


def test_compact_and_archive_wait_for_a_running_apply_and_exit_5(state: Path) -> None:
    from op_dbus.engine.lock import StateLock

    with StateLock(state).acquire():
        r = op(state, "blockchain", "compact")
        assert r.returncode == 5 and "another op-dbus holds" in r.stderr
        assert op(state, "blockchain", "archive", "--before", "2999-01-01").returncode == 5
    with Ledger.open(state) as log:
        assert log.get(0).state is not None  # nothing was dropped
    assert op(state, "blockchain", "compact").returncode == 0
