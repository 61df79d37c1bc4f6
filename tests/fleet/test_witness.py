"""The witness's add-checkpoint over SQLite and PostgreSQL: every reply of C2SP tlog-witness, evidence and alerts."""

from __future__ import annotations

import base64
import json
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import update

from op_dbus.fleet import db
from op_dbus.fleet.client import request_body
from op_dbus.fleet.witness import Witness, parse_request
from op_dbus.ledger import Ledger, note
from op_dbus.ledger.cosignature import WitnessSigner, WitnessVerifier, message

DATA = Path(__file__).parent.parent / "unit" / "ledger" / "data"
C2SP = DATA / "c2sp" / "examples.txt"
VECTORS = DATA / "merkle" / "testdata" / "consistency"


def example(block: str) -> str:
    text = C2SP.read_text(encoding="utf-8")
    start = text.index(f"### BEGIN {block} ")
    body = text[text.index("\n", start) + 1: text.index(f"### END {block}\n")]
    return body


@pytest.fixture
def witness(db_url: str) -> Witness:
    engine = db.make_engine(db_url)
    db.migrate(engine)
    return Witness(engine, WitnessSigner("witness.test/w1", Ed25519PrivateKey.generate()))


def grow(log: Ledger, n: int) -> None:
    for i in range(n):
        log.append("apply", [{"plugin": "systemd", "action": "set", "object": f"unit{len(log)}.{i}"}], {"n": len(log)},
                   actor={"user": "test"}, summary="test block")


def body_for(log: Ledger, old: int, size: int | None = None) -> bytes:
    size = len(log) if size is None else size
    proof = log.consistency_proof(old, size) if 0 < old < size else []
    return request_body(old, proof, log.checkpoint(size))


def test_first_checkpoint_then_consistent_growth_is_cosigned(witness: Witness, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "host") as log:
        grow(log, 3)
        witness.enroll("web1", log.verifier_key)
        reply = witness.add_checkpoint(body_for(log, 0))
        assert reply.status == 200, reply.body
        text = note.parse(log.checkpoint()).text
        assert reply.body.startswith("\u2014 witness.test/w1 ") and reply.body.endswith("\n")
        assert witness.signer.verifier.verify_line(text, reply.body.strip()) is not None
        grow(log, 5)
        reply = witness.add_checkpoint(body_for(log, 3))
        assert reply.status == 200, reply.body
        assert witness.current_size(log.origin) == 8
        # The same checkpoint again (old = size): cosigned again, nothing moves.
        assert witness.add_checkpoint(body_for(log, 8)).status == 200
        assert witness.current_size(log.origin) == 8
        assert witness.alerts() == []


def test_old_size_mismatch_is_409_with_the_witness_size(witness: Witness, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "host") as log:
        grow(log, 4)
        witness.enroll("web1", log.verifier_key)
        assert witness.add_checkpoint(body_for(log, 0)).status == 200
        grow(log, 2)
        for old in (0, 2, 5):
            reply = witness.add_checkpoint(body_for(log, old))
            assert (reply.status, reply.body, reply.content_type) == (409, "4\n", "text/x.tlog.size")
        assert witness.current_size(log.origin) == 4


def test_unknown_origin_404_bad_signature_403_revoked_403(witness: Witness, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "host") as log:
        grow(log, 2)
        assert witness.add_checkpoint(body_for(log, 0)).status == 404
        witness.enroll("web1", log.verifier_key)
        # Same origin, same key name, another key: a forger's checkpoint (the key ID differs, so it is "unknown").
        forger = note.Signer(log.origin, Ed25519PrivateKey.generate())
        forged = note.sign(note.checkpoint_text(log.origin, 2, log.root()), [forger])
        assert witness.add_checkpoint(request_body(0, [], forged)).status == 403
        # A signature line that claims the host's key ID but carries another signature.
        genuine = log.checkpoint()
        sig = note.parse(genuine).signatures[0]
        bad = base64.b64encode(sig.key_id + bytes(64)).decode()
        tampered = note.parse(genuine).text + "\n\u2014 " + log.origin + " " + bad + "\n"
        assert witness.add_checkpoint(request_body(0, [], tampered)).status == 403
        assert witness.add_checkpoint(body_for(log, 0)).status == 200
        witness.revoke("web1")
        grow(log, 1)
        assert witness.add_checkpoint(body_for(log, 2)).status == 403


def test_malformed_requests_are_400(witness: Witness, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "host") as log:
        grow(log, 2)
        witness.enroll("web1", log.verifier_key)
        cp = log.checkpoint()
        for body in [b"old 01\n\n" + cp.encode(), b"old -1\n\n" + cp.encode(), b"old 0\n" + cp.encode(),
                     b"old 0\nnot-base64!\n\n" + cp.encode(), b"\xff\xfe", ("old 0\n" + "AAAA\n" + "\n" + cp).encode(),
                     ("old 0\n" + f"{base64.b64encode(bytes(32)).decode()}\n" * 64 + "\n" + cp).encode(),
                     b"old 3\n\n" + cp.encode()]:  # old larger than the checkpoint
            assert witness.add_checkpoint(body).status == 400, body[:40]
        assert witness.current_size(log.origin) == 0


def test_bad_proof_is_422_and_kept_as_evidence_with_an_alert(witness: Witness, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "host") as log:
        grow(log, 5)
        witness.enroll("web1", log.verifier_key)
        assert witness.add_checkpoint(body_for(log, 0)).status == 200
        grow(log, 3)
        proof = log.consistency_proof(5, 8)
        proof[0] = bytes(32)
        reply = witness.add_checkpoint(request_body(5, proof, log.checkpoint()))
        assert reply.status == 422
        # old 0 with a proof, and old = size with a proof, are 422 too (the proof must be empty).
        assert witness.current_size(log.origin) == 5
        [ev] = witness.evidence(log.origin)
        assert ev["kind"] == "inconsistent" and ev["submitted"] == log.checkpoint() and ev["stored"] == log.checkpoint(5)
        [alert] = witness.alerts()
        assert (alert["host"], alert["kind"]) == ("web1", "equivocation")


def test_two_roots_for_one_size_are_evidence(witness: Witness, tmp_path: Path) -> None:
    """The attacker holds the host key, cuts the log and re-signs another history of the same length."""
    with Ledger.open(tmp_path / "host") as log:
        grow(log, 4)
        witness.enroll("web1", log.verifier_key)
        assert witness.add_checkpoint(body_for(log, 0)).status == 200
        original = log.checkpoint()
        key_path, origin = log.key_path, log.origin
    with Ledger.open(tmp_path / "rewritten", key_path=key_path, origin=origin) as fake:
        fake.append("apply", [{"plugin": "systemd", "action": "set", "object": "other"}], {"n": "x"},
                    actor={"user": "x"}, summary="x")
        grow(fake, 3)
        assert len(fake) == 4 and fake.checkpoint() != original
        for old in (4, 0):
            reply = witness.add_checkpoint(body_for(fake, old))
            assert (reply.status, reply.body) == (409, "4\n")
        evidence = witness.evidence(origin)
        assert {e["kind"] for e in evidence} == {"equivocation"}
        assert evidence[0]["stored"] == original and evidence[0]["submitted"] == fake.checkpoint()
        assert witness.alerts()[0]["kind"] == "equivocation"


@pytest.mark.parametrize("path", sorted(VECTORS.rglob("*.json")) if VECTORS.is_dir() else [],
                         ids=lambda p: str(p.relative_to(VECTORS)))
def test_consistency_vectors_through_the_witness(path: Path, tmp_path: Path) -> None:
    """Each published RFC 6962 consistency vector, as the witness's stored head and a signed checkpoint."""
    engine = db.make_engine(f"sqlite:///{tmp_path}/fleet.db")
    db.migrate(engine)
    w = Witness(engine, WitnessSigner("witness.test/w1", Ed25519PrivateKey.generate()))
    case = json.loads(path.read_text())
    size1, size2 = case["size1"], case["size2"]
    if size1 == 0 or size1 > size2:
        pytest.skip("the witness accepts only old 0 with an empty proof, and old <= size (400 otherwise)")
    signer = note.Signer("example.com/vectors", Ed25519PrivateKey.generate())
    w.enroll("vectors", signer.verifier.vkey)
    root1, root2 = base64.b64decode(case["root1"]), base64.b64decode(case["root2"] or "")
    if len(root2) != 32:
        pytest.skip("the vector's second root is not a hash: no checkpoint can carry it")
    with engine.begin() as conn:
        conn.execute(update(db.witness_state).where(db.witness_state.c.origin == "example.com/vectors")
                     .values(size=size1, root=root1))
    proof = [base64.b64decode(p) for p in case["proof"] or []]
    cp = note.sign(note.checkpoint_text("example.com/vectors", size2, root2), [signer])
    reply = w.add_checkpoint(request_body(size1, proof, cp))
    if any(len(h) != 32 for h in proof):
        assert case["wantErr"] and reply.status == 400, reply  # not even expressible as proof lines
    elif case["wantErr"]:
        assert reply.status in (409, 422), reply
        assert w.current_size("example.com/vectors") == size1
    else:
        assert reply.status == 200, reply
        assert w.current_size("example.com/vectors") == size2


def test_c2sp_examples() -> None:
    """The request example parses; our cosignature message is byte for byte the spec's; its line has our layout."""
    req = parse_request(example("tlog-witness-1").encode())
    assert req.old == 20852014 and len(req.proof) == 4
    assert note.parse_checkpoint(note.parse(req.checkpoint).text).size == 20852163
    cosigned = note.parse(example("tlog-cosignature-1"))
    witness_sig = cosigned.signatures[1]
    assert witness_sig.name == "witness.example.com/w1" and witness_sig.key_id.hex() == "8d66cf3f"
    (timestamp,) = struct.unpack(">Q", witness_sig.signature[:8])
    assert len(witness_sig.signature) == 72
    assert message(cosigned.text, timestamp).decode() == example("tlog-cosignature-2")
    # A vkey of ours has the 0x04 type byte and round-trips; a signed-note (0x01) key is refused as a witness key.
    verifier = WitnessSigner("witness.example/w1", Ed25519PrivateKey.generate()).verifier
    assert WitnessVerifier.from_vkey(verifier.vkey).key_id == verifier.key_id
    with pytest.raises(note.NoteError):
        WitnessVerifier.from_vkey(example("signed-note-2").strip())


def test_migrations_are_recorded_once(db_url: str) -> None:
    engine = db.make_engine(db_url)
    assert db.migrate(engine) == 0
    assert db.migrate(engine) == db.SCHEMA_VERSION


def test_enrolled_again_after_a_revoke_the_witness_remembers(witness: Witness, tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "host") as log:
        grow(log, 3)
        witness.enroll("web1", log.verifier_key)
        assert witness.add_checkpoint(body_for(log, 0)).status == 200
        witness.revoke("web1")
        witness.enroll("web1", log.verifier_key)
        reply = witness.add_checkpoint(body_for(log, 0))
        assert (reply.status, reply.body) == (409, "3\n")
        from op_dbus.errors import InvalidInput

        with pytest.raises(InvalidInput, match="already enrolled"):
            witness.enroll("web1", log.verifier_key)
        with pytest.raises(InvalidInput, match="another name"):
            witness.enroll("web2", log.verifier_key)
