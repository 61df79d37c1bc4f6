"""The audit log store: append, read, proofs, checkpoints, files and their permissions."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import rfc8785
from ledger_helpers import fill, sample_changes, sample_state

from op_dbus.errors import LedgerError
from op_dbus.ledger import (
    BlockNotFound,
    CanonicalError,
    KeyFileError,
    Ledger,
    LedgerCorrupt,
    merkle,
    note,
)


def test_append_and_read_back(ledger: Ledger) -> None:
    assert len(ledger) == 0
    assert ledger.head() is None
    fill(ledger, 5)
    assert len(ledger) == 5
    headers = ledger.headers()
    assert [h.index for h in headers] == [0, 1, 2, 3, 4]
    assert headers[0].prev == "0" * 64
    for before, after in itertools.pairwise(headers):
        assert after.prev == hashlib.sha256(before.leaf).hexdigest() == before.hash
    assert ledger.head() == headers[-1]
    assert [h.index for h in ledger.headers(1, 3)] == [1, 2]
    block = ledger.get(3)
    assert block.header == headers[3]
    assert block.changes == sample_changes(3)
    assert block.state["plugins"]["net"] == sample_state(3)["plugins"]["net"]
    assert ledger.get(-1).index == 4
    with pytest.raises(BlockNotFound):
        ledger.get(5)


def test_header_is_canonical_json_of_what_is_stored(ledger: Ledger) -> None:
    fill(ledger, 2)
    header = ledger.get(1).header
    as_dict = json.loads(header.leaf)
    assert rfc8785.dumps(as_dict) == header.leaf
    assert set(as_dict) == {
        "v", "index", "prev", "time", "kind", "actor", "summary", "changes_hash", "change_count", "state_hash",
        "plugin_state_hashes",
    }  # fmt: skip
    assert header.time.endswith("Z") and header.time[10] == "T"
    state = json.loads(json.dumps(sample_state(1)))
    state["plugins"]["systemd"]["units"]["nginx.service"]["MemoryMax"] = str(2**64 - 1)
    assert header.state_hash == hashlib.sha256(rfc8785.dumps(state)).hexdigest()
    assert header.plugin_state_hashes["net"] == hashlib.sha256(rfc8785.dumps(state["plugins"]["net"])).hexdigest()
    assert header.changes_hash == hashlib.sha256(rfc8785.dumps(sample_changes(1))).hexdigest()
    assert header.change_count == 1


def test_big_integers_are_recorded_as_strings(ledger: Ledger) -> None:
    header = ledger.append(
        "apply",
        [{"plugin": "systemd", "object": "x.service", "action": "set", "before": None, "after": 2**63}],
        {"version": 1, "plugins": {"systemd": {"limit": 2**64 - 1, "small": 2**53 - 1}}},
        actor={"uid": 2**60},
        summary="big",
        meta={"n": -(2**62)},
    )
    block = ledger.get(header.index)
    assert block.state["plugins"]["systemd"] == {"limit": "18446744073709551615", "small": 2**53 - 1}
    assert block.changes[0]["after"] == str(2**63)
    assert block.header.actor == {"uid": str(2**60)}
    assert block.header.meta == {"n": str(-(2**62))}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"kind": "Apply Now"}, "kind"),
        ({"changes": [{"plugin": "net"}]}, "object"),
        ({"changes": {"plugin": "net"}}, "list"),
        ({"state": {"version": 1, "plugins": {"net": float("nan")}}}, "nan"),
        ({"state": ["not", "a", "document"]}, "state"),
        ({"actor": "root"}, "actor"),
        ({"meta": {"blob": "x" * 20000}}, "meta"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(ledger: Ledger, args: dict, message: str) -> None:
    call = {"kind": "apply", "changes": [], "state": {"version": 1, "plugins": {}}, "actor": {}, "summary": "s"}
    call.update(args)
    with pytest.raises(CanonicalError, match=message):
        ledger.append(
            call["kind"], call["changes"], call["state"], actor=call["actor"], summary=call["summary"], meta=call.get("meta")
        )
    assert len(ledger) == 0


def test_identical_records_are_stored_once(ledger: Ledger) -> None:
    for _ in range(3):
        ledger.append("drift", [], {"version": 1, "plugins": {}}, actor={}, summary="same")
    conn = sqlite3.connect(ledger.db_path)
    assert conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 2
    conn.close()


def test_proofs_verify_against_checkpoints(ledger: Ledger) -> None:
    fill(ledger, 37)
    verifier = note.Verifier.from_vkey(ledger.public_key_path.read_text())
    for size in (1, 2, 13, 32, 37):
        cp = note.parse_checkpoint(note.open_note(ledger.checkpoint(size), [verifier]).text)
        assert cp.size == size and cp.origin == ledger.origin
        assert cp.root == ledger.root(size)
        for index in {0, size // 2, size - 1}:
            proof = ledger.inclusion_proof(index, size)
            merkle.verify_inclusion(index, size, ledger.get(index).header.leaf_hash, proof, cp.root)
    latest = note.parse_checkpoint(note.parse(ledger.checkpoint()).text)
    assert latest.size == 37
    for old in (1, 5, 16, 36, 37):
        merkle.verify_consistency(old, 37, ledger.consistency_proof(old, 37), ledger.root(old), latest.root)
    assert len(ledger.inclusion_proof(0)) == 6
    with pytest.raises(BlockNotFound):
        ledger.inclusion_proof(3, 38)
    with pytest.raises(merkle.ProofError):
        ledger.consistency_proof(0, 10)


def test_root_matches_an_independent_rebuild(ledger: Ledger) -> None:
    fill(ledger, 19)
    tree = merkle.MemoryTree()
    for header in ledger.headers():
        tree.append(merkle.leaf_hash(header.leaf))
    for size in range(20):
        assert ledger.root(size) == tree.root(size)


def test_checkpoint_of_empty_log_is_an_error(ledger: Ledger) -> None:
    with pytest.raises(LedgerError, match="empty"):
        ledger.checkpoint()


def test_appends_from_two_handles_interleave(state_dir: Path) -> None:
    with Ledger.open(state_dir) as a, Ledger.open(state_dir) as b:
        fill(a, 3)
        fill(b, 2)  # b's cached right edge is stale: it must notice a's blocks
        fill(a, 2)
        assert len(a) == len(b) == 7
        assert a.verify_full().ok


def test_files_and_modes(ledger: Ledger, state_dir: Path) -> None:
    fill(ledger, 1)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((state_dir / "ledger.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "ledger.db-wal").stat().st_mode) == 0o600
    assert stat.S_IMODE((state_dir / "host.key").stat().st_mode) == 0o600
    assert (state_dir / "host.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    vkey = (state_dir / "host.pub").read_text().strip()
    assert vkey == ledger.verifier_key
    assert vkey.startswith(ledger.origin + "+")
    assert ledger.origin.startswith("op-dbus/")
    conn = sqlite3.connect(state_dir / "ledger.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_reopen_keeps_origin_and_key(state_dir: Path) -> None:
    with Ledger.open(state_dir, origin="example.org/fleet/web1") as log:
        fill(log, 2)
        vkey = log.verifier_key
    with Ledger.open(state_dir) as log:
        assert log.origin == "example.org/fleet/web1"
        assert log.verifier_key == vkey
        fill(log, 1)
        assert log.verify_full().ok
    with pytest.raises(LedgerError, match="not 'other'"):
        Ledger.open(state_dir, origin="other")


def test_custom_key_path(tmp_path: Path) -> None:
    keydir = tmp_path / "keys"
    keydir.mkdir(mode=0o700)
    with Ledger.open(tmp_path / "state", key_path=keydir / "signing.key") as log:
        fill(log, 1)
    assert stat.S_IMODE((keydir / "signing.key").stat().st_mode) == 0o600
    assert (keydir / "signing.pub").read_text().strip() == log.verifier_key
    assert not (tmp_path / "state" / "host.key").exists()


def test_create_false_needs_an_existing_log(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="no audit log"):
        Ledger.open(tmp_path / "absent", create=False)
    (tmp_path / "empty").mkdir(mode=0o700)
    with pytest.raises(LedgerError, match="no audit log"):
        Ledger.open(tmp_path / "empty", create=False)


@pytest.mark.parametrize(("mode", "message"), [(0o620, "writable"), (0o602, "writable"), (0o640, "readable")])
def test_unsafe_key_file_is_refused(state_dir: Path, mode: int, message: str) -> None:
    Ledger.open(state_dir).close()
    key = state_dir / "host.key"
    secret = key.read_text()
    os.chmod(key, mode)
    with pytest.raises(KeyFileError, match=message) as err:
        Ledger.open(state_dir)
    assert "chmod 0600" in str(err.value)
    assert secret.splitlines()[1] not in str(err.value)


def test_key_owned_by_another_user_is_refused(state_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")
    Ledger.open(state_dir).close()
    os.chown(state_dir / "host.key", 65534, 65534)
    with pytest.raises(KeyFileError, match="owned by uid 65534"):
        Ledger.open(state_dir)


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_unsafe_state_dir_is_refused(state_dir: Path, mode: int) -> None:
    Ledger.open(state_dir).close()
    os.chmod(state_dir, mode)
    with pytest.raises(KeyFileError, match="writable by group or others"):
        Ledger.open(state_dir)


def test_state_dir_owned_by_another_user_is_refused(state_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    state_dir.mkdir(mode=0o700)
    os.chown(state_dir, 65534, 65534)
    with pytest.raises(KeyFileError, match="owned by uid 65534"):
        Ledger.open(state_dir)


def test_garbage_key_file_is_refused_without_echoing_it(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    key = state_dir / "host.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\nU0VDUkVUU0VDUkVU\n-----END PRIVATE KEY-----\n")
    os.chmod(key, 0o600)
    with pytest.raises(KeyFileError, match="not an unencrypted PKCS#8") as err:
        Ledger.open(state_dir)
    assert "U0VDUkVU" not in str(err.value)
    assert err.value.__cause__ is None


def test_symlinked_key_is_refused(state_dir: Path, tmp_path: Path) -> None:
    Ledger.open(state_dir).close()
    (state_dir / "host.key").rename(tmp_path / "real.key")
    (state_dir / "host.key").symlink_to(tmp_path / "real.key")
    with pytest.raises(KeyFileError):
        Ledger.open(state_dir)


def test_corrupted_database_is_reported_not_repaired(state_dir: Path) -> None:
    with Ledger.open(state_dir) as log:
        fill(log, 30)
    conn = sqlite3.connect(state_dir / "ledger.db")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    db = state_dir / "ledger.db"
    data = bytearray(db.read_bytes())
    page = 4096
    for offset in range(page * 2, len(data), page * 3):  # scribble over several b-tree pages
        data[offset : offset + 200] = os.urandom(200)
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    with pytest.raises(LedgerCorrupt, match="damaged"), Ledger.open(state_dir) as log:
        log.verify_full()
    assert db.read_bytes() == before


def test_not_a_database(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    (state_dir / "ledger.db").write_bytes(b"this is not sqlite" * 100)
    os.chmod(state_dir / "ledger.db", 0o600)
    with pytest.raises(LedgerCorrupt, match="damaged"):
        Ledger.open(state_dir)


def test_foreign_sqlite_database_is_refused(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    conn = sqlite3.connect(state_dir / "ledger.db")
    conn.execute("CREATE TABLE something (x)")
    conn.commit()
    conn.close()
    os.chmod(state_dir / "ledger.db", 0o600)
    with pytest.raises(LedgerCorrupt, match="not an op-dbus audit log"):
        Ledger.open(state_dir)


def test_edited_record_is_refused_on_read(ledger: Ledger) -> None:
    fill(ledger, 3)
    digest = bytes.fromhex(ledger.get(1).header.state_hash)
    conn = sqlite3.connect(ledger.db_path)
    conn.execute("UPDATE blobs SET data = CAST('{\"version\":1}' AS BLOB) WHERE hash = ?", (digest,))
    conn.commit()
    conn.close()
    with pytest.raises(LedgerCorrupt, match="block 1: its state record does not match"):
        ledger.get(1)


def test_compacted_state_reads_as_none_and_is_restored_by_a_later_append(ledger: Ledger) -> None:
    fill(ledger, 2)
    digest = bytes.fromhex(ledger.get(0).header.state_hash)
    conn = sqlite3.connect(ledger.db_path)
    conn.execute("UPDATE blobs SET data = NULL WHERE hash = ?", (digest,))
    conn.commit()
    conn.close()
    assert ledger.get(0).state is None
    assert ledger.verify_full().ok
    ledger.append("apply", sample_changes(9), sample_state(0), actor={}, summary="same state as block 0")
    assert ledger.get(0).state is not None


def test_a_failure_inside_the_append_transaction_leaves_nothing_behind(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(ledger, 3)

    def broken_sign(*args: object, **kwargs: object) -> str:
        raise RuntimeError("signing device unplugged")

    with monkeypatch.context() as patch:
        patch.setattr(note, "sign", broken_sign)
        with pytest.raises(RuntimeError, match="unplugged"):
            fill(ledger, 1)
    assert len(ledger) == 3
    conn = sqlite3.connect(ledger.db_path)
    assert conn.execute("SELECT MAX(size) FROM checkpoints").fetchone()[0] == 3
    assert conn.execute("SELECT COUNT(*) FROM tree WHERE level = 0").fetchone()[0] == 3
    conn.close()
    fill(ledger, 2)
    assert ledger.verify_full().ok
