"""Full verification: each kind of tampering, done directly on the SQLite rows, is found and located."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from ledger_helpers import fill

from op_dbus.ledger import Ledger, canonical, merkle, note, verify
from op_dbus.ledger.keys import load_private_key

N = 12


@pytest.fixture(autouse=True, params=["in-process", "child-process"])
def link_check_mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Large logs check headers, links and records in a child process: both paths must find the same things."""
    if request.param == "child-process":
        monkeypatch.setattr(verify, "CHILD_THRESHOLD", -1)
    return str(request.param)


@pytest.fixture
def log(state_dir: Path) -> Iterator[Ledger]:
    """A 12-block log that one verifier has already seen in full (its checkpoint and key are pinned)."""
    with Ledger.open(state_dir) as ledger:
        fill(ledger, N)
        report = ledger.verify_full()
        assert report.ok and report.size == N and report.first_bad is None
        yield ledger


def sql(ledger: Ledger, statement: str, *params: Any) -> None:
    conn = sqlite3.connect(ledger.db_path)
    conn.execute(statement, params)
    conn.commit()
    conn.close()


def leaf(ledger: Ledger, index: int) -> dict[str, Any]:
    return json.loads(ledger.get(index).header.leaf)


def assert_bad(ledger: Ledger, first_bad: int, *fragments: str, **kwargs: Any) -> None:
    report = ledger.verify_full(**kwargs)
    text = "\n".join(report.problems)
    assert not report.ok, "tampering was not detected"
    assert report.first_bad == first_bad, text
    for fragment in fragments:
        assert fragment in text, text
    assert report.checkpoint is None


def test_clean_log_verifies_and_records_what_it_saw(log: Ledger, state_dir: Path) -> None:
    last = (state_dir / "verifier" / "last-checkpoint").read_text()
    assert last == log.checkpoint()
    assert (state_dir / "verifier" / "trusted-key").read_text().strip() == log.verifier_key
    fill(log, 3)
    report = log.verify_full(update=False)
    assert report.ok and report.size == N + 3
    assert (state_dir / "verifier" / "last-checkpoint").read_text() == last
    assert log.verify_full(all_signatures=True).ok
    assert (state_dir / "verifier" / "last-checkpoint").read_text() == log.checkpoint()


def test_empty_log_verifies(ledger: Ledger) -> None:
    report = ledger.verify_full()
    assert report.ok and report.size == 0


@pytest.mark.parametrize("index", [0, 5, N - 1])
def test_edited_header(log: Ledger, index: int) -> None:
    header = leaf(log, index)
    header["summary"] = "nothing to see here"
    sql(log, "UPDATE blocks SET leaf = ? WHERE idx = ?", canonical(header), index)
    assert_bad(log, index, f"block {index}: the tree head over blocks 0 to {index} differs")


def test_header_edited_by_one_byte_in_place(log: Ledger) -> None:
    raw = bytearray(log.get(4).header.leaf)
    raw[raw.index(b"step 4")] = ord("S")
    sql(log, "UPDATE blocks SET leaf = ? WHERE idx = 4", bytes(raw))
    assert_bad(log, 4, "block 5: 'prev' is not the hash of the block before it")


def test_header_stored_as_text(log: Ledger) -> None:
    # A hand edit with the sqlite3 shell stores TEXT; the same bytes still verify, other bytes do not.
    sql(log, "UPDATE blocks SET leaf = CAST(leaf AS TEXT) WHERE idx = 2")
    assert log.verify_full().ok
    sql(log, "UPDATE blocks SET leaf = replace(leaf, 'step 2', 'step X') WHERE idx = 2")
    assert_bad(log, 2)


@pytest.mark.parametrize("what", ["changes", "state"])
def test_edited_record(log: Ledger, what: str) -> None:
    digest = bytes.fromhex(getattr(log.get(6).header, f"{what}_hash"))
    sql(log, "UPDATE blobs SET data = CAST(replace(CAST(data AS TEXT), '150', '900') AS BLOB) WHERE hash = ?", digest)
    assert_bad(log, 6, f"block 6: its {what} record does not match the hash in the header")


def test_deleted_record(log: Ledger) -> None:
    sql(log, "DELETE FROM blobs WHERE hash = ?", bytes.fromhex(log.get(3).header.changes_hash))
    assert_bad(log, 3, "block 3: its changes record is missing")


def test_deleted_block(log: Ledger) -> None:
    sql(log, "DELETE FROM blocks WHERE idx = 7")
    assert_bad(log, 7, "block 7 missing")


def test_deleted_block_with_its_checkpoint_and_renumbered(log: Ledger) -> None:
    # A careful edit: remove block 7, shift later rows down so the indexes look contiguous.
    sql(log, "DELETE FROM blocks WHERE idx = 7")
    sql(log, "UPDATE blocks SET idx = idx - 1 WHERE idx > 7")
    sql(log, "DELETE FROM checkpoints WHERE size = ?", N)
    assert_bad(log, 7, "block 7: holds the header of block 8")


def test_swapped_blocks(log: Ledger) -> None:
    a, b = log.get(3).header.leaf, log.get(4).header.leaf
    sql(log, "UPDATE blocks SET leaf = ? WHERE idx = 3", b)
    sql(log, "UPDATE blocks SET leaf = ? WHERE idx = 4", a)
    assert_bad(log, 3, "block 3: holds the header of block 4")


def test_truncated_tail(log: Ledger) -> None:
    sql(log, "DELETE FROM blocks WHERE idx >= 9")
    assert_bad(log, 9, f"holds a signed checkpoint for {N}: blocks 9 to {N - 1} were removed")


def test_truncated_tail_with_everything_derived_removed(log: Ledger) -> None:
    # Blocks, checkpoints and tree nodes beyond size 9 all gone: only the verifier's own record knows.
    sql(log, "DELETE FROM blocks WHERE idx >= 9")
    sql(log, "DELETE FROM checkpoints WHERE size > 9")
    tree = merkle.MemoryTree()
    for header in log.headers():
        tree.append(header.leaf_hash)
    conn = sqlite3.connect(log.db_path)
    for level, nodes in enumerate(tree.levels):
        conn.execute("DELETE FROM tree WHERE level = ? AND idx >= ?", (level, len(nodes)))
    conn.commit()
    conn.close()
    assert_bad(log, 9, f"this verifier saw {N} before: blocks 9 to {N - 1} were removed")


def test_truncation_is_not_seen_by_a_verifier_that_never_saw_the_tail(log: Ledger, tmp_path: Path) -> None:
    # The limit of the design, stated as a test: without an outside record, a clean cut looks like a shorter log.
    sql(log, "DELETE FROM blocks WHERE idx >= 9")
    sql(log, "DELETE FROM checkpoints WHERE size > 9")
    sql(log, "DELETE FROM tree WHERE (idx + 1) * (1 << level) > 9")
    assert log.verify_full(verifier_dir=tmp_path / "fresh-verifier").ok
    assert not log.verify_full().ok


def test_edited_checkpoint(log: Ledger) -> None:
    signed = log.checkpoint(5)
    parsed = note.parse(signed)
    forged = signed.replace(parsed.text.split("\n")[2], base64.b64encode(bytes(32)).decode())
    sql(log, "UPDATE checkpoints SET note = ? WHERE size = 5", forged)
    assert_bad(log, 4, "block 4: the tree head over blocks 0 to 4 differs from the signed checkpoint 5")


def test_missing_checkpoint(log: Ledger) -> None:
    sql(log, "DELETE FROM checkpoints WHERE size = 8")
    assert_bad(log, 7, "no signed checkpoint for tree size 8")


def _flip_signature(signed: str) -> str:
    head, _, b64 = signed.rstrip("\n").rpartition(" ")
    raw = bytearray(base64.b64decode(b64))
    raw[20] ^= 0x01  # inside the signature, after the key ID
    return f"{head} {base64.b64encode(bytes(raw)).decode()}\n"


def test_forged_signature_on_latest_checkpoint(log: Ledger) -> None:
    sql(log, "UPDATE checkpoints SET note = ? WHERE size = ?", _flip_signature(log.checkpoint()), N)
    assert_bad(log, N - 1, f"checkpoint {N}: the signature does not verify")


def test_forged_signature_on_old_checkpoint_needs_all_signatures(log: Ledger) -> None:
    sql(log, "UPDATE checkpoints SET note = ? WHERE size = 3", _flip_signature(log.checkpoint(3)))
    # The text of checkpoint 3 is still the true tree head, and the latest signature covers the whole
    # tree; only the exhaustive mode checks every old signature.
    assert log.verify_full(update=False).ok
    assert_bad(log, 2, "checkpoint 3: the signature does not verify", all_signatures=True)


def test_edited_index_columns(log: Ledger) -> None:
    sql(log, "UPDATE blocks SET kind = 'rollback' WHERE idx = 2")
    assert_bad(log, 2, "block 2: the kind/time index columns disagree")


def test_damaged_tree_cache(log: Ledger) -> None:
    sql(log, "UPDATE tree SET hash = ? WHERE level = 2 AND idx = 1", bytes(32))
    assert_bad(log, 4, "the Merkle node (level 2, index 1) does not match")


def test_missing_tree_node(log: Ledger) -> None:
    sql(log, "DELETE FROM tree WHERE level = 1 AND idx = 3")
    assert_bad(log, 6, "lacks node (level 1, index 3)")


def _rewrite_history(ledger: Ledger, start: int, signer: note.Signer, edit: Callable[[dict[str, Any]], None]) -> None:
    """What an attacker with a signing key does: change block `start`, then rebuild everything after it."""
    conn = sqlite3.connect(ledger.db_path)
    rows = conn.execute("SELECT idx, leaf FROM blocks ORDER BY idx").fetchall()
    tree = merkle.MemoryTree()
    prev = "0" * 64
    for idx, data in rows:
        if idx >= start:
            header = json.loads(data)
            if idx == start:
                edit(header)
            header["prev"] = prev
            data = canonical(header)
            conn.execute("UPDATE blocks SET leaf = ? WHERE idx = ?", (data, idx))
        prev = hashlib.sha256(data).hexdigest()
        tree.append(merkle.leaf_hash(data))
        if idx >= start:
            text = note.checkpoint_text(ledger.origin, idx + 1, tree.root())
            conn.execute("UPDATE checkpoints SET note = ? WHERE size = ?", (note.sign(text, [signer]), idx + 1))
    conn.execute("DELETE FROM tree")
    for level, nodes in enumerate(tree.levels):
        conn.executemany("INSERT INTO tree VALUES (?, ?, ?)", [(level, i, h) for i, h in enumerate(nodes)])
    conn.commit()
    conn.close()


def _hide_failure(header: dict[str, Any]) -> None:
    header["kind"] = "apply"
    header["summary"] = "all good"


def test_history_resigned_with_another_key(log: Ledger, state_dir: Path) -> None:
    new_key = Ed25519PrivateKey.generate()
    (state_dir / "host.key").write_bytes(new_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    _rewrite_history(log, 5, note.Signer(log.origin, new_key), _hide_failure)
    sql(log, "UPDATE blocks SET kind = 'apply' WHERE idx = 5")
    with Ledger.open(state_dir) as forged:
        assert forged.verifier_key != log.verifier_key  # the impostor key is what the host now holds
        report = forged.verify_full()
        text = "\n".join(report.problems)
        assert not report.ok
        assert report.first_bad == 5, text
        assert "checkpoint 6: signed by" in text and "not by the trusted key" in text
        assert f"the first {N} blocks are not those this verifier saw before" in text
        assert "host.key was replaced without `op-dbus key rotate`" in text  # a problem now, not a note


def test_history_resigned_with_the_stolen_host_key(log: Ledger, state_dir: Path) -> None:
    # Every signature is valid: only the verifier's record of the last tree head it saw exposes the rewrite.
    stolen = load_private_key(state_dir / "host.key")
    _rewrite_history(log, 5, note.Signer(log.origin, stolen), _hide_failure)
    sql(log, "UPDATE blocks SET kind = 'apply' WHERE idx = 5")
    assert_bad(log, 0, f"the first {N} blocks are not those this verifier saw before: history was rewritten")


def test_tampered_verifier_record(log: Ledger, state_dir: Path) -> None:
    record = state_dir / "verifier" / "last-checkpoint"
    record.write_text(_flip_signature(record.read_text()))
    report = log.verify_full()
    assert not report.ok
    assert "does not verify with the trusted key" in "\n".join(report.problems)


def test_verifier_dir_can_live_elsewhere(log: Ledger, tmp_path: Path) -> None:
    outside = tmp_path / "offline-verifier"
    assert log.verify_full(verifier_dir=outside).ok
    assert (outside / "last-checkpoint").read_text() == log.checkpoint()
    sql(log, "DELETE FROM blocks WHERE idx >= 10")
    sql(log, "DELETE FROM checkpoints WHERE size > 10")
    sql(log, "DELETE FROM tree WHERE (idx + 1) * (1 << level) > 10")
    report = log.verify_full(verifier_dir=outside)
    assert not report.ok and report.first_bad == 10


def test_header_replaced_by_a_number(log: Ledger) -> None:
    sql(log, "UPDATE blocks SET leaf = 1000000000000 WHERE idx = 3")
    assert_bad(log, 3, "block 3: the header is not a JSON object")
