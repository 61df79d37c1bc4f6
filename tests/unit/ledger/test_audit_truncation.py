"""A cut or short export never passes: the auditor reads the export's own range, and the host refuses to export
a log whose block rows or latest checkpoint do not hold up."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import fill
from test_audit_cli import op
from test_audit_export import export_doc, run_isolated

from op_dbus import audit_verify
from op_dbus.ledger import Ledger


@pytest.fixture
def filled(ledger: Ledger) -> Ledger:
    fill(ledger, 23)
    return ledger


def _cut(doc: dict[str, Any], keep: int) -> dict[str, Any]:
    doc["blocks"] = doc["blocks"][:keep]
    return doc


def test_a_whole_log_export_cut_short_with_its_checkpoint_kept_fails(filled: Ledger) -> None:
    doc = _cut(export_doc(filled), 20)
    assert doc["range"] == {"first": 0, "last": 22}
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and report.first_bad == 20 and report.complete is False
    assert any("blocks 20 to 22 are missing" in p and "whole log signed at tree size 23" in p for p in report.problems)


def test_a_cut_export_exits_3_for_the_auditor(filled: Ledger, tmp_path: Path) -> None:
    export, key = tmp_path / "cut.json", tmp_path / "host.pub"
    export.write_text(json.dumps(_cut(export_doc(filled), 21)))
    key.write_text(filled.verifier_key + "\n")
    r = run_isolated(tmp_path, export, key)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.startswith("FAILED at block 21") and "blocks 21 to 22 are missing" in r.stdout


def test_a_range_export_says_so_and_is_verified_as_one(filled: Ledger, tmp_path: Path) -> None:
    doc = export_doc(filled, 0, 19)
    assert doc["range"] == {"first": 0, "last": 19}
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert report.ok and report.complete is False, report.problems
    assert any("a range export: blocks 0..19 of the 23 blocks" in n for n in report.notes)
    export, key = tmp_path / "part.json", tmp_path / "host.pub"
    export.write_text(json.dumps(doc))
    key.write_text(filled.verifier_key + "\n")
    r = run_isolated(tmp_path, export, key)
    assert r.returncode == 0 and "verified (a range export of a log of 23 blocks)" in r.stdout, r.stdout + r.stderr
    whole = audit_verify.verify_export(export_doc(filled), filled.verifier_key)
    assert whole.ok and whole.complete is True


@pytest.mark.parametrize(("blocks", "expected"), [
    (slice(0, 4), "ends at block 8: blocks 9 to 9 are missing"),   # range 5..9, blocks 5..8
    (slice(1, 5), "range starts at block 5, its first block is 6"),  # range 5..9, blocks 6..9
])
def test_a_range_export_must_hold_exactly_its_range(filled: Ledger, blocks: slice, expected: str) -> None:
    doc = export_doc(filled, 5, 9)
    doc["blocks"] = doc["blocks"][blocks]
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and any(expected in p for p in report.problems), report.problems


def test_a_range_beyond_the_checkpoint_or_malformed_fails(filled: Ledger) -> None:
    doc = export_doc(filled)
    doc["range"] = {"first": 0, "last": 30}
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert any("goes beyond the signed checkpoint" in p for p in report.problems)
    doc["range"] = {"first": "0", "last": 22}
    assert any('"range" is not' in p for p in audit_verify.verify_export(doc, filled.verifier_key).problems)


def test_an_export_without_a_range_must_hold_the_whole_log(filled: Ledger) -> None:
    doc = _cut(export_doc(filled), 22)
    del doc["range"]
    report = audit_verify.verify_export(doc, filled.verifier_key)
    assert not report.ok and any("names no range, so it must hold the whole log" in p for p in report.problems)


# -- the host side: export-blockchain refuses a log that does not hold up -------------------------------------


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    with Ledger.open(path) as log:
        fill(log, 12)
    return path


def _sql(state: Path, statement: str, *args: Any) -> None:
    conn = sqlite3.connect(state / "ledger.db")
    conn.execute(statement, args)
    conn.commit()
    conn.close()


@pytest.mark.parametrize("index", [11, 5])
def test_export_blockchain_refuses_when_block_rows_are_missing(state: Path, index: int) -> None:
    _sql(state, "DELETE FROM blocks WHERE idx = ?", index)
    r = op(state, "export-blockchain")
    assert r.returncode == 3, r.stdout[:200] + r.stderr
    assert r.stdout == "" and "block rows are missing" in r.stderr and "verify --full" in r.stderr
    j = op(state, "-o", "json", "blockchain", "export", "--range", "0-3")
    assert j.returncode == 3 and "block rows are missing" in j.stderr


def test_export_of_an_edited_checkpoint_names_the_signature_not_a_merkle_node(state: Path) -> None:
    conn = sqlite3.connect(state / "ledger.db")
    signed = conn.execute("SELECT note FROM checkpoints WHERE size = 12").fetchone()[0]
    conn.close()
    origin, _size, rest = signed.split("\n", 2)
    _sql(state, "UPDATE checkpoints SET note = ? WHERE size = 12", f"{origin}\n16\n{rest}")
    r = op(state, "export-blockchain")
    assert r.returncode == 3, r.stderr
    assert "the latest checkpoint (tree size 12) does not verify" in r.stderr and "does not verify" in r.stderr
    assert "Merkle node" not in r.stderr
