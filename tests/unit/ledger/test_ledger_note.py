"""C2SP signed notes and tlog checkpoints: the published examples, and our own signing."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from op_dbus.ledger import note

EXAMPLES = Path(__file__).parent / "data" / "c2sp" / "examples.txt"


def _blocks() -> dict[str, str]:
    text = EXAMPLES.read_text(encoding="utf-8")
    found = re.findall(r"^### BEGIN (\S+) \|[^\n]*\n(.*?)^### END \1$", text, flags=re.M | re.S)
    return dict(found)


BLOCKS = _blocks()


def test_examples_loaded() -> None:
    assert {"signed-note-2", "signed-note-3", "tlog-checkpoint-1", "tlog-cosignature-1", "tlog-witness-1"} <= set(BLOCKS)


def test_spec_note_verifies_with_spec_key() -> None:
    verifier = note.Verifier.from_vkey(BLOCKS["signed-note-2"])
    assert verifier.name == "example.com/foo"
    assert verifier.key_id.hex() == "530d903a"
    opened = note.open_note(BLOCKS["signed-note-3"], [verifier])
    assert opened.text == "This is an example message.\n"
    assert verifier.vkey == BLOCKS["signed-note-2"].strip()


def test_spec_note_altered_text_fails() -> None:
    verifier = note.Verifier.from_vkey(BLOCKS["signed-note-2"])
    altered = BLOCKS["signed-note-3"].replace("example message", "example massage")
    with pytest.raises(note.NoteError, match="does not verify"):
        note.open_note(altered, [verifier])


def test_spec_vkey_with_wrong_key_id_is_refused() -> None:
    name, _, key = BLOCKS["signed-note-2"].strip().split("+", 2)
    with pytest.raises(note.NoteError, match="key ID"):
        note.Verifier.from_vkey(f"{name}+530d903b+{key}")
    with pytest.raises(note.NoteError):
        note.Verifier.from_vkey(f"{name}+530d903a")


def test_spec_checkpoint_parses() -> None:
    parsed = note.parse(BLOCKS["tlog-checkpoint-1"])
    cp = note.parse_checkpoint(parsed.text)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert len(cp.root) == 32
    assert cp.text() == parsed.text
    [sig] = parsed.signatures
    assert sig.name == "example.com/behind-the-sofa"
    assert sig.key_id.hex() == "033de0ae"
    assert len(sig.signature) == 64


def test_spec_checkpoint_is_not_trusted_without_its_key() -> None:
    stranger = note.Verifier("example.com/behind-the-sofa", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(note.NoteError, match="not signed by a trusted key"):
        note.open_note(BLOCKS["tlog-checkpoint-1"], [stranger])


def test_spec_cosigned_checkpoint_parses() -> None:
    parsed = note.parse(BLOCKS["tlog-cosignature-1"])
    assert [s.name for s in parsed.signatures] == ["example.com/behind-the-sofa", "witness.example.com/w1"]
    witness = parsed.signatures[1]
    assert witness.key_id.hex() == "8d66cf3f"
    assert len(witness.signature) == 8 + 64  # big-endian timestamp, then the Ed25519 signature
    assert int.from_bytes(witness.signature[:8], "big") == 1679315147
    assert note.parse_checkpoint(parsed.text).size == 20852163


def test_spec_witness_request_embeds_a_checkpoint() -> None:
    body = BLOCKS["tlog-witness-1"]
    head, _, signed = body.partition("\n\n")
    assert head.startswith("old 20852014\n")
    parsed = note.parse(signed)
    assert note.parse_checkpoint(parsed.text).size == 20852163
    assert len(parsed.signatures) == 2


@pytest.mark.parametrize("block", ["tlog-witness-3"])
def test_spec_truncated_signatures_are_rejected(block: str) -> None:
    _, _, signed = BLOCKS[block].partition("\n\n")
    with pytest.raises(note.NoteError, match="base64"):
        note.parse(signed)


def test_sign_and_open_round_trip() -> None:
    signer = note.Signer("op-dbus/host/abcd1234", Ed25519PrivateKey.generate())
    text = note.checkpoint_text("op-dbus/host/abcd1234", 5, bytes(range(32)))
    signed = note.sign(text, [signer])
    assert signed.startswith(text + "\n\u2014 op-dbus/host/abcd1234 ")
    opened = note.open_note(signed, [signer.verifier])
    assert note.parse_checkpoint(opened.text) == note.Checkpoint("op-dbus/host/abcd1234", 5, bytes(range(32)))
    again = note.Verifier.from_vkey(signer.verifier.vkey)
    note.open_note(signed.encode(), [again])
    assert "PRIVATE" not in repr(signer)


def test_forged_signature_by_known_key_is_an_error() -> None:
    signer = note.Signer("log", Ed25519PrivateKey.generate())
    signed = note.sign("log\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", [signer])
    line = signed.rsplit(" ", 1)[1].strip()
    raw = bytearray(base64.b64decode(line))
    raw[10] ^= 0xFF
    forged = signed.replace(line, base64.b64encode(bytes(raw)).decode())
    with pytest.raises(note.NoteError, match="does not verify"):
        note.open_note(forged, [signer.verifier])
    other = note.Signer("log", Ed25519PrivateKey.generate())
    with pytest.raises(note.NoteError, match="not signed by a trusted key"):
        note.open_note(signed, [other.verifier])


@pytest.mark.parametrize(
    "text",
    [
        "no newline at the end",
        "a\n\nblank line inside\n",
        "control \x07 char\n",
        "",
    ],
)
def test_bad_note_text_is_refused(text: str) -> None:
    signer = note.Signer("log", Ed25519PrivateKey.generate())
    with pytest.raises(note.NoteError):
        note.sign(text, [signer])


def test_malformed_notes_are_refused() -> None:
    signer = note.Signer("log", Ed25519PrivateKey.generate())
    good = note.sign("hello\n", [signer])
    for bad in (
        good.replace("\u2014", "-"),  # a hyphen is not an em dash
        good[:-1],  # no final newline
        good.replace("\n\n", "\n"),  # no blank line before signatures
        "hello\n\n",  # no signature at all
        good.replace(" ", "  ", 1),
        b"\xff\xfe" + good.encode(),
    ):
        with pytest.raises(note.NoteError):
            note.parse(bad)


@pytest.mark.parametrize(
    "text",
    [
        "origin\n007\n" + base64.b64encode(bytes(32)).decode() + "\n",  # leading zeros
        "origin\n-1\n" + base64.b64encode(bytes(32)).decode() + "\n",
        "origin\n5\n" + base64.b64encode(bytes(31)).decode() + "\n",  # not a SHA-256 hash
        "origin\n5\n",
        "\n5\n" + base64.b64encode(bytes(32)).decode() + "\n",
    ],
)
def test_bad_checkpoints_are_refused(text: str) -> None:
    with pytest.raises(note.NoteError):
        note.parse_checkpoint(text)


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\tname"])
def test_bad_key_names_are_refused(name: str) -> None:
    with pytest.raises(note.NoteError):
        note.Signer(name, Ed25519PrivateKey.generate())
