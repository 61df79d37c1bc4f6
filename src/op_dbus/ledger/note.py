"""C2SP signed notes with Ed25519 keys, and C2SP tlog checkpoints carried in them.

A note is UTF-8 text ending in a newline, a blank line, then one or more signature lines
`— <key name> <base64(key ID || signature)>`. The Ed25519 key ID is the first four bytes of
SHA-256(key name || "\\n" || 0x01 || public key); a verifier key is written
`<name>+<hex key ID>+<base64(0x01 || public key)>`. A checkpoint is a note whose text is the log
origin, the tree size in decimal and the base64 tree head, each on its own line, then optional
extension lines.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from op_dbus.errors import LedgerError

SIG_PREFIX = "\u2014 "  # an EM DASH and a space, never a hyphen
ALG_ED25519 = 0x01
MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 100

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")


class NoteError(LedgerError, ValueError):
    """A note or checkpoint is malformed or its signature does not verify."""


def check_key_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name) or _CONTROL.search(name):
        raise NoteError(f"invalid key name {name!r}: it must be non-empty, without spaces or '+'")


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def split_vkey(vkey: str, alg: int, what: str, kind: str) -> tuple[str, str, Ed25519PublicKey]:
    """A C2SP verifier key `<name>+<hex key ID>+<base64 type byte || Ed25519 key>`: the name, the key ID as written
    (the caller checks it against its own key ID rule) and the key; NoteError names `what` when malformed."""
    parts = vkey.strip().split("+", 2)  # base64 may itself contain '+'; a name never does
    if len(parts) != 3:
        raise NoteError(f"{what} must look like <name>+<hex key ID>+<base64 key>")
    name, hex_id, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
        bytes.fromhex(hex_id)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not valid hex/base64") from exc
    if len(raw) != 33 or raw[0] != alg:
        raise NoteError(f"{what} is not {kind}")
    return name, hex_id, Ed25519PublicKey.from_public_bytes(raw[1:])


class Verifier:
    """An Ed25519 verifier key with its name."""

    def __init__(self, name: str, public: Ed25519PublicKey) -> None:
        check_key_name(name)
        self.name = name
        self.public = public
        self.public_bytes = _raw_public(public)
        self.key_id = key_id(name, self.public_bytes)

    @classmethod
    def from_vkey(cls, vkey: str) -> Verifier:
        name, hex_id, public = split_vkey(vkey, ALG_ED25519, "verifier key", "an Ed25519 key")
        verifier = cls(name, public)
        if len(hex_id) != 8 or bytes.fromhex(hex_id) != verifier.key_id:
            raise NoteError(f"verifier key for {name!r} has a key ID that does not match the key")
        return verifier

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_ED25519]) + self.public_bytes
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode()}"

    def verify(self, text: str, signature: bytes) -> bool:
        if len(signature) != 64:
            return False
        try:
            self.public.verify(signature, text.encode())
        except InvalidSignature:
            return False
        return True


class Signer:
    """An Ed25519 signing key with its name. Never printed: repr shows the name and key ID only."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.verifier = Verifier(name, private.public_key())
        self.name = name
        self.key_id = self.verifier.key_id

    def __repr__(self) -> str:
        return f"Signer({self.name!r}, key ID {self.key_id.hex()})"

    def signature_line(self, text: str) -> str:
        sig = self._private.sign(text.encode())
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(self.key_id + sig).decode()}\n"


@dataclass(frozen=True)
class Signature:
    name: str
    key_id: bytes
    signature: bytes  # the bytes after the key ID (64 for Ed25519; cosignatures carry more)


@dataclass(frozen=True)
class Note:
    text: str
    signatures: list[Signature] = field(default_factory=list)


def check_text(text: str) -> None:
    if not text or not text.endswith("\n"):
        raise NoteError("note text must be non-empty and end with a newline")
    if _CONTROL.search(text):
        raise NoteError("note text contains control characters")
    if "\n\n" in text:
        raise NoteError("note text must not contain a blank line")


def sign(text: str, signers: Iterable[Signer]) -> str:
    """The signed note for `text`."""
    check_text(text)
    lines = [s.signature_line(text) for s in signers]
    if not lines:
        raise NoteError("a note needs at least one signature")
    return text + "\n" + "".join(lines)


def parse(data: str | bytes) -> Note:
    """Split a signed note into its text and signatures, checking the format (not the signatures)."""
    if isinstance(data, bytes):
        if len(data) > MAX_NOTE_BYTES:
            raise NoteError("note is too large")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("note is not valid UTF-8") from exc
    if len(data) > MAX_NOTE_BYTES:
        raise NoteError("note is too large")
    split = data.rfind("\n\n")
    if split < 0:
        raise NoteError("note has no signature block (no blank line)")
    text, block = data[: split + 1], data[split + 2 :]
    check_text(text)
    if not block.endswith("\n"):
        raise NoteError("signature block must end with a newline")
    signatures = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise NoteError(f"signature line does not start with an em dash: {line[:40]!r}")
        name, sep, b64 = line[len(SIG_PREFIX) :].partition(" ")
        if not sep or " " in b64:
            raise NoteError("signature line must be '— <name> <base64>'")
        check_key_name(name)
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NoteError(f"signature by {name!r} is not valid base64") from exc
        if len(raw) < 5:
            raise NoteError(f"signature by {name!r} is too short")
        signatures.append(Signature(name, raw[:4], raw[4:]))
    if len(signatures) > MAX_SIGNATURES:
        raise NoteError("note has too many signatures")
    return Note(text, signatures)


def open_note(data: str | bytes, verifiers: Iterable[Verifier]) -> Note:
    """Parse and authenticate a note: at least one signature must verify under one of `verifiers`.

    A signature that claims a known key (same name and key ID) but does not verify is an error even
    if another one verifies; signatures by unknown keys are ignored, as the format intends.
    """
    note = parse(data)
    known = {(v.name, v.key_id): v for v in verifiers}
    verified = []
    for sig in note.signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue
        if not verifier.verify(note.text, sig.signature):
            raise NoteError(f"signature by {sig.name} (key {sig.key_id.hex()}) does not verify")
        verified.append(sig)
    if not verified:
        names = ", ".join(f"{s.name} ({s.key_id.hex()})" for s in note.signatures) or "none"
        raise NoteError(f"note is not signed by a trusted key (signatures: {names})")
    return Note(note.text, verified)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def parse_checkpoint(text: str) -> Checkpoint:
    """Parse checkpoint note text (not the signatures)."""
    check_text(text)
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise NoteError("checkpoint needs an origin, a size and a root hash")
    origin, size_s, root_s, *extensions = lines
    if not origin:
        raise NoteError("checkpoint origin is empty")
    if not _DECIMAL.fullmatch(size_s) or int(size_s) >= 1 << 64:
        raise NoteError(f"checkpoint size {size_s!r} is not a decimal 64-bit number")
    try:
        root = base64.b64decode(root_s, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError("checkpoint root hash is not valid base64") from exc
    if len(root) != 32:
        raise NoteError("checkpoint root hash is not 32 bytes")
    if any(not line for line in extensions):
        raise NoteError("checkpoint extension lines must not be empty")
    return Checkpoint(origin, int(size_s), root, tuple(extensions))
