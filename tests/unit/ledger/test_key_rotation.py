"""The host key: a swapped key fails verification, host.pub is never rewritten, and `op-dbus key rotate` records a
rotation that both keys sign, which `verify --full` and the auditor follow (and nothing else)."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from ledger_helpers import fill
from test_audit_cli import op
from test_audit_export import run_isolated

from op_dbus import audit_verify
from op_dbus.ledger import Ledger, note
from op_dbus.ledger.export import write_export


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    with Ledger.open(path) as log:
        fill(log, 6)
    return path


def swap_host_key(state: Path) -> None:
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (state / "host.key").write_bytes(pem)


def export_of(state: Path) -> dict[str, Any]:
    buf = io.StringIO()
    with Ledger.open(state) as log:
        write_export(log, buf)
    return json.loads(buf.getvalue())


def test_a_swapped_host_key_fails_verify_full_with_exit_3(state: Path) -> None:
    assert op(state, "verify", "--full").returncode == 0  # pins the key
    published = (state / "host.pub").read_text()
    swap_host_key(state)
    r = op(state, "verify", "--full")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "host.key was replaced without `op-dbus key rotate`" in r.stdout
    j = op(state, "-o", "json", "verify", "--full")
    assert j.returncode == 3 and json.loads(j.stdout)["ok"] is False
    assert (state / "host.pub").read_text() == published  # never rewritten to the impostor's key


def test_host_pub_is_never_rewritten_by_opening_the_log(state: Path) -> None:
    published = (state / "host.pub").read_text()
    swap_host_key(state)
    with Ledger.open(state) as log:
        assert log.verifier_key + "\n" != published
    assert (state / "host.pub").read_text() == published


def test_a_stale_host_pub_fails_verify_full(state: Path) -> None:
    with Ledger.open(state / "elsewhere") as other:
        (state / "host.pub").write_text(other.verifier_key + "\n")
    r = op(state, "verify", "--full")
    assert r.returncode == 3 and "host.pub does not name the key that signs the log" in r.stdout, r.stdout


def test_key_rotate_records_a_block_signed_by_both_keys(state: Path) -> None:
    assert op(state, "verify", "--full").returncode == 0
    old = note.Verifier.from_vkey((state / "host.pub").read_text())
    r = op(state, "-o", "json", "key", "rotate")
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    new = note.Verifier.from_vkey(body["new_key"])
    assert body["block"] == 6 and body["kind"] == "key-rotation" and body["old_key"] == old.vkey
    # the rotation's checkpoint carries two signature lines, and each verifies with its own key
    signed = body["checkpoint"]
    assert len(note.parse(signed).signatures) == 2
    assert note.open_note(signed, [old]).text == note.open_note(signed, [new]).text
    assert (state / "host.pub").read_text().strip() == new.vkey
    assert (state / f"host.pub.{old.key_id.hex()}").read_text().strip() == old.vkey  # kept for auditors
    with Ledger.open(state) as log:
        assert log.verifier_key == new.vkey
        header = log.headers(6, 7)[0]
        assert header.meta["rotation"] == {"old_key": old.vkey, "new_key": new.vkey}
        assert header.state_hash == log.headers(5, 6)[0].state_hash  # nothing on the system changed
        fill(log, 2)
    v = op(state, "-o", "json", "verify", "--full")
    assert v.returncode == 0, v.stdout
    assert any("follows 1 key rotation" in n for n in json.loads(v.stdout)["notes"])
    assert (state / "verifier" / "trusted-key").read_text().strip() == new.vkey  # the pin followed the block
    assert op(state, "verify", "--full").returncode == 0
    text = op(state, "key", "rotate")
    assert text.returncode == 0 and "recorded block 9 (key-rotation), its checkpoint signed by both keys" in text.stdout


def test_the_auditor_follows_a_rotation_with_the_old_public_key(state: Path, tmp_path: Path) -> None:
    old_pub = tmp_path / "old.pub"
    old_pub.write_text((state / "host.pub").read_text())
    assert op(state, "key", "rotate").returncode == 0
    with Ledger.open(state) as log:
        fill(log, 3)
    doc = export_of(state)
    assert [r["index"] for r in doc["key_rotations"]] == [6]
    report = audit_verify.verify_export(doc, old_pub.read_text())
    assert report.ok and report.key_rotations == 1, report.problems
    assert audit_verify.verify_export(doc, (state / "host.pub").read_text()).ok
    export = tmp_path / "audit.json"
    export.write_text(json.dumps(doc))
    r = run_isolated(tmp_path, export, old_pub)
    assert r.returncode == 0 and "signed by the key the given one was rotated to" in r.stdout, r.stdout + r.stderr


def test_the_auditor_refuses_a_rotation_signed_by_one_key(state: Path) -> None:
    old_vkey = (state / "host.pub").read_text()
    assert op(state, "key", "rotate").returncode == 0
    doc = export_of(state)
    rotation = doc["key_rotations"][0]
    text, _sigs = rotation["checkpoint"].split("\n\n")
    only_new = rotation["checkpoint"].rstrip("\n").rsplit("\n", 1)[1]
    rotation["checkpoint"] = f"{text}\n\n{only_new}\n"  # the old key's signature line removed
    report = audit_verify.verify_export(doc, old_vkey)
    assert not report.ok
    assert any("key rotation at block 6 is not followed" in p and "signed by both" in p for p in report.problems)
    assert any("no signature by the given key" in p for p in report.problems)


def test_an_impostor_key_cannot_rotate_itself_in(state: Path) -> None:
    """Whoever swaps host.key and runs `key rotate` gets a rotation the pinned key never signed: verify fails."""
    assert op(state, "verify", "--full").returncode == 0
    swap_host_key(state)
    assert op(state, "key", "rotate").returncode == 0
    r = op(state, "verify", "--full")
    assert r.returncode == 3, r.stdout
    assert "no key-rotation block signed by both leads from one to the other" in r.stdout


def test_a_forged_rotation_row_fails_verification(state: Path) -> None:
    assert op(state, "key", "rotate").returncode == 0
    assert op(state, "verify", "--full").returncode == 0
    conn = sqlite3.connect(state / "ledger.db")
    signed = conn.execute("SELECT note FROM checkpoints WHERE size = 7").fetchone()[0]
    conn.execute("UPDATE checkpoints SET note = ? WHERE size = 7", (signed.rstrip("\n").rsplit("\n", 1)[0] + "\n",))
    conn.commit()
    conn.close()
    r = op(state, "verify", "--full")
    assert r.returncode == 3 and "is not signed by both keys" in r.stdout, r.stdout


def test_another_open_log_signs_with_the_new_key_after_a_rotation(state: Path) -> None:
    with Ledger.open(state) as agent, Ledger.open(state) as rotator:
        rotator.rotate_key(actor={"user": "root"})
        fill(agent, 1)  # a long-lived writer (the agent) follows the rotation instead of signing with the old key
        assert agent.verifier_key == rotator.verifier_key
        report = agent.verify_full()
    assert report.ok, report.problems


def test_an_interrupted_rotation_is_finished_on_the_next_open(state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Ledger.open(state) as log:
        old = log.verifier_key

        def crash(*_a: Any) -> None:
            raise KeyboardInterrupt

        monkeypatch.setattr(Ledger, "_install_key", crash)
        with pytest.raises(KeyboardInterrupt):
            log.rotate_key(actor={})
    monkeypatch.undo()
    assert (state / "host.key.next").exists()
    with Ledger.open(state) as log:
        assert log.verifier_key != old and not (state / "host.key.next").exists()
        fill(log, 1)
        assert log.verify_full().ok


def test_a_new_key_without_its_block_is_never_used(state: Path) -> None:
    with Ledger.open(state) as log:
        old = log.verifier_key
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (state / "host.key.next").write_bytes(pem)
    (state / "host.key.next").chmod(0o600)
    with Ledger.open(state) as log:
        assert log.verifier_key == old  # a rotation may be under way elsewhere: the file is left to it
        fill(log, 1)
        rotated = log.rotate_key(actor={})
        assert log.verifier_key != old and not (state / "host.key.next").exists()
        assert log.verify_full().ok and rotated.index == 7


def test_rotating_an_empty_log_is_refused(tmp_path: Path) -> None:
    Ledger.open(tmp_path / "empty").close()
    r = op(tmp_path / "empty", "key", "rotate")
    assert r.returncode == 2 and "the audit log is empty" in r.stderr


def test_append_refuses_the_rotation_kind(state: Path) -> None:
    from op_dbus.ledger import CanonicalError

    with Ledger.open(state) as log, pytest.raises(CanonicalError, match="rotate_key"):
        log.append("key-rotation", [], {"version": 1, "plugins": {}}, actor={}, summary="sneaky")


def test_the_auditor_refuses_a_rotation_the_signed_log_does_not_extend(state: Path) -> None:
    old_vkey = (state / "host.pub").read_text()
    assert op(state, "key", "rotate").returncode == 0
    with Ledger.open(state) as log:
        fill(log, 3)
    doc = export_of(state)
    proof = doc["key_rotations"][0]["consistency_proof"]
    proof[0] = ("0" if proof[0][0] != "0" else "1") + proof[0][1:]
    report = audit_verify.verify_export(doc, old_vkey)
    assert not report.ok and report.first_bad == 6
    assert any("does not extend the checkpoint that both keys signed" in p for p in report.problems)
