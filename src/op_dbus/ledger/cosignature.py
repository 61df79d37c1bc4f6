"""C2SP tlog-cosignature (cosignature/v1, Ed25519): witness keys, cosigning a checkpoint, verifying a cosignature.

A witness signs `cosignature/v1\\ntime <T>\\n` followed by the whole checkpoint note text; the signature line is
`— <witness name> base64(key ID || u64 big-endian T || 64-byte Ed25519 signature)` where the key ID is
SHA-256(name || "\\n" || 0x04 || public key)[:4], and its verifier key is `<name>+<hex key ID>+<base64(0x04 || key)>`.
The host keeps the cosignatures it receives beside its checkpoints (table `cosignatures` of ledger.db, created
by this module on first use; the log's own tables are untouched).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import sqlite3
import struct
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from op_dbus.ledger.note import SIG_PREFIX, NoteError, check_key_name, check_text, split_vkey

ALG_COSIGNATURE_V1 = 0x04
HEADER = "cosignature/v1\n"
MAX_TIMESTAMP = (1 << 63) - 1


def key_id(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_COSIGNATURE_V1]) + public).digest()[:4]


def message(text: str, timestamp: int) -> bytes:
    """The bytes a cosignature/v1 signs for checkpoint note text `text` at POSIX time `timestamp`."""
    check_text(text)
    if not 0 <= timestamp <= MAX_TIMESTAMP:
        raise NoteError(f"cosignature timestamp {timestamp} is out of range")
    return f"{HEADER}time {timestamp}\n{text}".encode()


class WitnessVerifier:
    """A witness's cosignature/v1 verifier key."""

    def __init__(self, name: str, public: Ed25519PublicKey) -> None:
        check_key_name(name)
        self.name = name
        self.public = public
        self.public_bytes = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.key_id = key_id(name, self.public_bytes)

    @classmethod
    def from_vkey(cls, vkey: str) -> WitnessVerifier:
        name, hex_id, public = split_vkey(vkey, ALG_COSIGNATURE_V1, "witness key",
                                          "an Ed25519 cosignature/v1 key (type 0x04)")
        verifier = cls(name, public)
        if len(hex_id) != 8 or bytes.fromhex(hex_id) != verifier.key_id:
            raise NoteError(f"witness key for {name!r} has a key ID that does not match the key")
        return verifier

    @property
    def vkey(self) -> str:
        raw = bytes([ALG_COSIGNATURE_V1]) + self.public_bytes
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode()}"

    def verify_line(self, text: str, line: str) -> int | None:
        """The timestamp of signature line `line` if it is this witness's valid cosignature on `text`, else None."""
        parsed = parse_line(line)
        if parsed is None:
            return None
        name, kid, rest = parsed
        if name != self.name or kid != self.key_id or len(rest) != 72:
            return None
        (timestamp,) = struct.unpack(">Q", rest[:8])
        if timestamp > MAX_TIMESTAMP:
            return None
        try:
            self.public.verify(rest[8:], message(text, timestamp))
        except InvalidSignature:
            return None
        return int(timestamp)


class WitnessSigner:
    """A witness's Ed25519 cosigning key. Never printed: repr shows the name and key ID only."""

    def __init__(self, name: str, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.verifier = WitnessVerifier(name, private.public_key())
        self.name = name

    def __repr__(self) -> str:
        return f"WitnessSigner({self.name!r}, key ID {self.verifier.key_id.hex()})"

    def cosign(self, text: str, timestamp: int) -> str:
        """The cosignature line (with its newline) over checkpoint note text `text`."""
        sig = self._private.sign(message(text, timestamp))
        raw = self.verifier.key_id + struct.pack(">Q", timestamp) + sig
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(raw).decode()}\n"


def parse_line(line: str) -> tuple[str, bytes, bytes] | None:
    """(name, key ID, signature bytes) of a note signature line, or None if it is not one."""
    line = line.rstrip("\n")
    if not line.startswith(SIG_PREFIX):
        return None
    name, sep, b64 = line[len(SIG_PREFIX):].partition(" ")
    if not sep or not name or " " in b64:
        return None
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) < 5:
        return None
    return name, raw[:4], raw[4:]


# -- the host's store of cosignatures received (in its ledger.db, an additive table) -------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cosignatures (
    witness TEXT NOT NULL,          -- the witness's verifier key (name+id+key)
    size INTEGER NOT NULL,          -- the tree size of the checkpoint it cosigned
    line TEXT NOT NULL,             -- the cosignature line, exactly as received
    received TEXT NOT NULL,
    PRIMARY KEY (witness, size)
) WITHOUT ROWID
"""


@dataclass(frozen=True)
class StoredCosignature:
    witness: str
    size: int
    line: str


def _connect(db_path: str, *, write: bool = False) -> sqlite3.Connection:
    """A connection to the log's database; the table is created by the first write, so readers never write."""
    conn = sqlite3.connect(db_path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA synchronous=FULL")
    if write:
        conn.execute(_SCHEMA)
    elif conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'cosignatures'").fetchone() is None:
        conn.execute("CREATE TEMP TABLE cosignatures (witness TEXT, size INTEGER, line TEXT, received TEXT)")
    return conn


def record(db_path: str, witness_vkey: str, size: int, line: str) -> None:
    """Keep a verified cosignature for tree size `size`."""
    conn = _connect(db_path, write=True)
    try:
        conn.execute("INSERT OR REPLACE INTO cosignatures VALUES (?, ?, ?, ?)",
                     (witness_vkey, size, line.rstrip("\n") + "\n", datetime.now(UTC).isoformat()))
    finally:
        conn.close()


def last_cosigned(db_path: str, witness_vkey: str) -> int:
    """The largest tree size `witness_vkey` has cosigned for this log (0 for none)."""
    conn = _connect(db_path)
    try:
        row = conn.execute("SELECT MAX(size) FROM cosignatures WHERE witness = ?", (witness_vkey,)).fetchone()
    finally:
        conn.close()
    return int(row[0]) if row and row[0] is not None else 0


def for_size(db_path: str, size: int) -> list[StoredCosignature]:
    conn = _connect(db_path)
    try:
        rows = conn.execute("SELECT witness, size, line FROM cosignatures WHERE size = ? ORDER BY witness",
                            (size,)).fetchall()
    finally:
        conn.close()
    return [StoredCosignature(str(w), int(s), str(ln)) for w, s, ln in rows]


def latest(db_path: str) -> list[StoredCosignature]:
    """Each witness's cosignature of the largest size it cosigned."""
    conn = _connect(db_path)
    try:
        rows = conn.execute(
            "SELECT witness, size, line FROM cosignatures c WHERE size = "
            "(SELECT MAX(size) FROM cosignatures d WHERE d.witness = c.witness) ORDER BY witness").fetchall()
    finally:
        conn.close()
    return [StoredCosignature(str(w), int(s), str(ln)) for w, s, ln in rows]
