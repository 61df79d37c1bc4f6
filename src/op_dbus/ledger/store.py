"""The audit log store: SQLite tables, durable signed appends, reads, tree heads and proofs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sqlite3
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from op_dbus import files, statedir
from op_dbus.errors import ExitCode, LedgerError
from op_dbus.ledger import keys, merkle, note
from op_dbus.ledger.canonical import CanonicalError, canonical, canonical_object

DB_NAME = statedir.LEDGER_DB
KEY_NAME = statedir.HOST_KEY
FORMAT = "op-dbus audit log"
SCHEMA_VERSION = "1"
BLOCK_VERSION = 1
ZERO_HASH = "0" * 64
KEY_ROTATION = "key-rotation"
MAX_SUMMARY = 4096
MAX_META_BYTES = 16 * 1024
_KIND = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HOST_SAFE = re.compile(r"[^A-Za-z0-9._-]")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
    idx  INTEGER PRIMARY KEY,
    leaf BLOB NOT NULL,
    kind TEXT NOT NULL,
    time TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS blocks_by_kind ON blocks (kind, idx);
CREATE INDEX IF NOT EXISTS blocks_by_time ON blocks (time);
CREATE TABLE IF NOT EXISTS blobs (
    hash BLOB PRIMARY KEY,
    data BLOB
);
CREATE TABLE IF NOT EXISTS tree (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    size INTEGER PRIMARY KEY,
    note TEXT NOT NULL
);
"""


class LedgerCorrupt(LedgerError):
    """The database is damaged or its contents contradict themselves. It is reported, never repaired."""


class LedgerVerificationFailed(LedgerCorrupt):
    """The log's contents fail a check that a command needs before it can go on (exit 3, as verification)."""

    exit_code = ExitCode.DIFFERENCE


class BlockNotFound(LedgerError, IndexError):
    pass


def _sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class BlockHeader:
    """One block's header: exactly the canonical JSON `leaf` bytes that the Merkle tree commits to."""

    index: int
    prev: str
    time: str
    kind: str
    actor: dict[str, Any]
    summary: str
    changes_hash: str
    change_count: int
    state_hash: str
    plugin_state_hashes: dict[str, str]
    meta: dict[str, Any]
    leaf: bytes = field(repr=False, compare=True)

    @property
    def hash(self) -> str:
        """The block hash (hex SHA-256 of the leaf bytes): what the next block's `prev` names."""
        return _sha256_hex(self.leaf)

    @property
    def leaf_hash(self) -> bytes:
        """The RFC 6962 leaf hash, SHA-256(0x00 || leaf), as used in proofs."""
        return merkle.leaf_hash(self.leaf)

    def to_dict(self) -> dict[str, Any]:
        header: dict[str, Any] = json.loads(self.leaf)
        return header

    @classmethod
    def from_leaf(cls, leaf: bytes | str) -> BlockHeader:
        leaf = as_bytes(leaf)
        try:
            d = json.loads(leaf)
            if not isinstance(d, dict):
                raise TypeError("not an object")
            return cls(
                index=_typed(d, "index", int),
                prev=_typed(d, "prev", str),
                time=_typed(d, "time", str),
                kind=_typed(d, "kind", str),
                actor=_typed(d, "actor", dict),
                summary=_typed(d, "summary", str),
                changes_hash=_typed(d, "changes_hash", str),
                change_count=_typed(d, "change_count", int),
                state_hash=_typed(d, "state_hash", str),
                plugin_state_hashes=_typed(d, "plugin_state_hashes", dict),
                meta=d.get("meta", {}),
                leaf=bytes(leaf),
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise LedgerCorrupt(f"a block header is not valid: {exc}") from None


def as_bytes(value: object) -> bytes:
    """A stored leaf or blob as bytes (a hand-edited row may hold TEXT or a number; hash what SQLite returns)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return str(value).encode()


def _typed(d: dict[str, Any], key: str, kind: type) -> Any:
    value = d[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"field {key!r} is not a {kind.__name__}")
    return value


@dataclass(frozen=True)
class Block:
    header: BlockHeader
    changes: list[dict[str, Any]] | None  # None once compacted
    state: dict[str, Any] | None  # None once compacted

    @property
    def index(self) -> int:
        return self.header.index


@dataclass(frozen=True)
class InclusionProof:
    """Block `block` is leaf `block.index` of the tree of `size` leaves with head `root`, as `proof` shows;
    `checkpoint` is the signed note that commits to that head."""

    block: Block
    size: int
    root: bytes
    proof: list[bytes]
    checkpoint: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.block.index, "leaf_hash": self.block.header.leaf_hash.hex(), "tree_size": self.size,
                "root": self.root.hex(), "proof": [h.hex() for h in self.proof], "checkpoint": self.checkpoint}


@dataclass
class VerifyReport:
    ok: bool
    size: int
    first_bad: int | None
    problems: list[str]
    root: str | None = None  # hex tree head over all stored blocks
    checkpoint: str | None = None  # the latest checkpoint, when it verified
    notes: list[str] = field(default_factory=list)  # facts that are not problems (e.g. a key pinned on first use)

    def __bool__(self) -> bool:
        return self.ok


def default_origin(public: bytes) -> str:
    host = _HOST_SAFE.sub("-", socket.gethostname()) or "localhost"
    return f"op-dbus/{host}/{hashlib.sha256(public).hexdigest()[:8]}"


def canonical_state(state: Mapping[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Canonical bytes of a state document and the hash of each plugin's section, canonicalising each part once."""
    if not isinstance(state, Mapping):
        raise CanonicalError("state: expected a state document object")
    plugins = state.get("plugins", {})
    if not isinstance(plugins, Mapping):
        raise CanonicalError("state.plugins: expected an object")
    sections: dict[str, bytes] = {}
    for name, section in plugins.items():
        if not isinstance(name, str):
            raise CanonicalError(f"state.plugins: plugin name {name!r} is not a string")
        sections[name] = canonical(section, path=f"state.plugins[{json.dumps(name)}]")
    members: dict[str, bytes] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise CanonicalError(f"state: key {key!r} is not a string")
        members[key] = canonical_object(sections) if key == "plugins" else canonical(value, path=f"state.{key}")
    return canonical_object(members), {name: _sha256_hex(b) for name, b in sections.items()}


def rotation_keys(header: BlockHeader) -> tuple[note.Verifier, note.Verifier]:
    """The (old, new) keys a `key-rotation` block names. Raises LedgerCorrupt when it names none."""
    rotation = header.meta.get("rotation") if header.kind == KEY_ROTATION else None
    try:
        if not isinstance(rotation, dict):
            raise note.NoteError("no rotation in its meta")
        return note.Verifier.from_vkey(str(rotation.get("old_key"))), note.Verifier.from_vkey(str(rotation.get("new_key")))
    except note.NoteError as exc:
        raise LedgerCorrupt(f"block {header.index} is a key rotation that does not name its keys ({exc})") from None


def _check_changes(changes: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    if isinstance(changes, (str, bytes, Mapping)) or not isinstance(changes, Sequence):
        raise CanonicalError("changes: expected a list of change records")
    out = []
    for i, change in enumerate(changes):
        if not isinstance(change, Mapping):
            raise CanonicalError(f"changes[{i}]: expected an object")
        for key in ("plugin", "object", "action"):
            if not isinstance(change.get(key), str):
                raise CanonicalError(f"changes[{i}].{key}: expected a string")
        out.append(change)
    return out


class Ledger:
    """The audit log of one state directory. Use one instance per thread; many processes may share the file."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        state_dir: Path,
        key_path: Path,
        signer: note.Signer,
        busy_timeout: float,
    ) -> None:
        self._conn = conn
        self.state_dir = state_dir
        self.db_path = state_dir / DB_NAME
        self.key_path = key_path
        self.public_key_path = key_path.with_suffix(".pub")
        self._signer = signer
        self.busy_timeout = busy_timeout
        self._frontier: merkle.Frontier | None = None
        self._frontier_head = ZERO_HASH
        self._rotation_seen: int | None = None  # index of the latest key-rotation block this instance signs after

    def __repr__(self) -> str:
        return f"Ledger({str(self.state_dir)!r}, origin={self.origin!r})"

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        state_dir: Path | str,
        *,
        key_path: Path | str | None = None,
        create: bool = True,
        origin: str | None = None,
        busy_timeout: float = 30.0,
    ) -> Ledger:
        """Open (or create) the audit log in `state_dir`.

        `origin` names a new log (default `op-dbus/<hostname>/<first 8 hex of SHA-256(public key)>`);
        an existing log keeps the origin it was created with. `busy_timeout` is how long an append
        waits for another process's append.
        """
        state_dir = Path(state_dir).absolute()
        if not state_dir.exists() and not create:
            raise LedgerError(f"no audit log at {state_dir}: the directory does not exist")
        files.trusted_dir(state_dir, "state directory", error=keys.KeyFileError)
        db_path = state_dir / DB_NAME
        _prepare_db_file(db_path, create=create)
        key_path = Path(key_path).absolute() if key_path is not None else state_dir / KEY_NAME
        private, _ = keys.load_or_create_private_key(key_path, create=create)
        conn = _connect(db_path, busy_timeout)
        try:
            stored_origin = _init_schema(conn, db_path, origin, private)
            signer = note.Signer(stored_origin, private)
        except BaseException:
            conn.close()
            raise
        ledger = cls(conn, state_dir, key_path, signer, busy_timeout)
        try:
            ledger._finish_rotation()
        except BaseException:
            conn.close()
            raise
        ledger._write_public_key()
        return ledger

    def _write_public_key(self) -> None:
        """Write host.pub when it is missing; never replace it (only `rotate_key` does, recording why in the log).

        A host.pub that no longer names the host key is reported by `verify_full`, not silently rewritten.
        """
        if self.public_key_path.exists() or self.public_key_path.is_symlink():
            return
        # A convenience copy for auditors and witnesses; a read-only key directory must not stop the log.
        with contextlib.suppress(OSError):
            keys.write_public_file(self.public_key_path, self.verifier_key + "\n")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- identity ----------------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self._signer.name

    @property
    def verifier_key(self) -> str:
        """The C2SP verifier key (`<origin>+<key ID>+<base64 key>`) that checks this log's checkpoints."""
        return self._signer.verifier.vkey

    @property
    def verifier(self) -> note.Verifier:
        return self._signer.verifier

    # -- transactions ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise LedgerError(
                    f"{self.db_path}: {action}: another process held the audit log for more than {self.busy_timeout:g}s"
                ) from exc
            if "malformed" in text or "not a database" in text:
                raise _corrupt(self.db_path, exc) from exc
            raise LedgerError(f"{self.db_path}: {action} failed: {text}") from exc
        except sqlite3.DatabaseError as exc:
            raise _corrupt(self.db_path, exc) from exc

    @contextlib.contextmanager
    def transaction(self, action: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        """One SQLite transaction (BEGIN IMMEDIATE when `write`) for the log's own modules (archive, export,
        verify) that read or rewrite several tables at once; errors become LedgerError naming `action`."""
        with self._errors(action):
            self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full, I/O error): never leave the connection mid-transaction.
                if self._conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    # -- appending ---------------------------------------------------------------------------------

    def append(
        self,
        kind: str,
        changes: Sequence[Mapping[str, Any]],
        state: Mapping[str, Any],
        *,
        actor: Mapping[str, Any],
        summary: str,
        meta: Mapping[str, Any] | None = None,
    ) -> BlockHeader:
        """Record one block durably (fsync'd before returning) with its signed checkpoint.

        Integers outside +-(2^53 - 1) anywhere in the inputs are recorded as decimal strings.
        """
        if kind == KEY_ROTATION:
            raise CanonicalError(f"kind {kind!r} is written by rotate_key only")
        return self._append(kind, changes, state, actor=actor, summary=summary, meta=meta)

    def _append(
        self,
        kind: str,
        changes: Sequence[Mapping[str, Any]],
        state: Mapping[str, Any] | None,
        *,
        actor: Mapping[str, Any],
        summary: str,
        meta: Mapping[str, Any] | None = None,
        cosigner: note.Signer | None = None,
        stored_state: tuple[bytes, dict[str, str]] | None = None,
    ) -> BlockHeader:
        if not isinstance(kind, str) or not _KIND.fullmatch(kind):
            raise CanonicalError(f"kind {kind!r}: expected a lower-case word such as 'apply' or 'drift'")
        if not isinstance(summary, str) or len(summary) > MAX_SUMMARY:
            raise CanonicalError(f"summary: expected a string of at most {MAX_SUMMARY} characters")
        if not isinstance(actor, Mapping):
            raise CanonicalError("actor: expected an object")
        if meta is not None and not isinstance(meta, Mapping):
            raise CanonicalError("meta: expected an object")
        records = _check_changes(changes)
        changes_bytes = canonical(records, path="changes")
        changes_hash = _sha256_hex(changes_bytes)
        # A key rotation repeats the last block's state record as stored, hashes and all.
        state_bytes, plugin_hashes = stored_state if stored_state is not None else canonical_state(state or {})
        state_hash = _sha256_hex(state_bytes)
        # Normalised through canonical JSON so the header holds only JSON values (big integers as strings).
        actor_value = json.loads(canonical(actor, path="actor"))
        meta_value = json.loads(canonical(meta, path="meta")) if meta else None
        if meta_value is not None and len(canonical(meta_value)) > MAX_META_BYTES:
            raise CanonicalError(f"meta: larger than {MAX_META_BYTES} bytes; record large data as changes or state")

        with self.transaction("append", write=True) as db:
            tail = db.execute("SELECT idx, leaf FROM blocks ORDER BY idx DESC LIMIT 1").fetchone()
            index = 0 if tail is None else tail[0] + 1
            prev = ZERO_HASH if tail is None else _sha256_hex(as_bytes(tail[1]))
            cached = self._frontier
            if cached is None or cached.size != index or self._frontier_head != prev:
                # Another process appended since this one did: it may have rotated the key.
                (rotation,) = db.execute("SELECT MAX(idx) FROM blocks WHERE kind = ?", (KEY_ROTATION,)).fetchone()
                if rotation != self._rotation_seen:
                    self._follow_rotation(db, rotation)
            frontier = self._frontier_for(db, index, prev)
            header: dict[str, Any] = {
                "v": BLOCK_VERSION,
                "index": index,
                "prev": prev,
                "time": _now(),
                "kind": kind,
                "actor": actor_value,
                "summary": summary,
                "changes_hash": changes_hash,
                "change_count": len(records),
                "state_hash": state_hash,
                "plugin_state_hashes": plugin_hashes,
            }
            if meta_value:
                header["meta"] = meta_value
            leaf = canonical(header)
            put_blob = (
                "INSERT INTO blobs (hash, data) VALUES (?, ?) "
                "ON CONFLICT (hash) DO UPDATE SET data = excluded.data WHERE data IS NULL"
            )
            db.execute(put_blob, (bytes.fromhex(changes_hash), changes_bytes))
            if state_hash != changes_hash:
                db.execute(put_blob, (bytes.fromhex(state_hash), state_bytes))
            db.execute("INSERT INTO blocks (idx, leaf, kind, time) VALUES (?, ?, ?, ?)", (index, leaf, kind, header["time"]))
            nodes = frontier.append(merkle.leaf_hash(leaf))
            db.executemany("INSERT INTO tree (level, idx, hash) VALUES (?, ?, ?)", nodes)
            signers = [self._signer] if cosigner is None else [self._signer, cosigner]
            signed = note.sign(note.checkpoint_text(self.origin, index + 1, frontier.root()), signers)
            db.execute("INSERT INTO checkpoints (size, note) VALUES (?, ?)", (index + 1, signed))
        self._frontier, self._frontier_head = frontier, _sha256_hex(leaf)
        return BlockHeader(
            index=index,
            prev=prev,
            time=header["time"],
            kind=kind,
            actor=actor_value,
            summary=summary,
            changes_hash=changes_hash,
            change_count=len(records),
            state_hash=state_hash,
            plugin_state_hashes=plugin_hashes,
            meta=meta_value or {},
            leaf=leaf,
        )

    # -- key rotation ------------------------------------------------------------------------------

    @property
    def next_key_path(self) -> Path:
        """Where a rotation keeps the new key until its block is written (then it replaces the host key)."""
        return self.key_path.with_name(self.key_path.name + ".next")

    def old_public_key_path(self, key_id: bytes) -> Path:
        """Where a rotated-out public key stays for auditors: `host.pub.<hex key ID>`."""
        return self.public_key_path.with_name(f"{self.public_key_path.name}.{key_id.hex()}")

    def rotate_key(self, *, actor: Mapping[str, Any], summary: str | None = None) -> BlockHeader:
        """Replace the host key: append a `key-rotation` block whose checkpoint both the old and the new key sign.

        The block repeats the last block's state (nothing on the system changed) and names both keys in its
        meta (`rotation: {old_key, new_key}`, C2SP verifier keys). The new key is written 0600 to
        `host.key.next` first and replaces `host.key` only once the block is durable; an interrupted
        rotation is finished by the next `open` (a key whose block was never written is replaced by the next
        rotation and never used). The old
        public key stays as `host.pub.<key ID>`, and host.pub then names the new key.
        """
        if len(self) == 0:
            raise LedgerError("the audit log is empty: there is no history to carry over to a new key",
                              hint="the first `op-dbus apply` creates the log and its key")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.next_key_path)  # a leftover of a rotation whose block was never written
        keys.create_private_key(self.next_key_path)
        new = note.Signer(self.origin, keys.load_private_key(self.next_key_path))
        old = self._signer
        with self.transaction("read", write=False) as db:
            row = db.execute("SELECT leaf FROM blocks ORDER BY idx DESC LIMIT 1").fetchone()
            last = BlockHeader.from_leaf(row[0])
            raw = db.execute("SELECT data FROM blobs WHERE hash = ?", (bytes.fromhex(last.state_hash),)).fetchone()
        if raw is None or raw[0] is None or _sha256_hex(as_bytes(raw[0])) != last.state_hash:
            raise LedgerCorrupt(f"block {last.index}'s state record is missing or edited; the key was not rotated",
                                hint="run `op-dbus verify --full`")
        meta = {"rotation": {"old_key": old.verifier.vkey, "new_key": new.verifier.vkey}}
        header = self._append(
            KEY_ROTATION, [], None, actor=actor, meta=meta, cosigner=new,
            stored_state=(as_bytes(raw[0]), last.plugin_state_hashes),
            summary=summary or f"host key rotated: {old.key_id.hex()} -> {new.key_id.hex()}",
        )
        self._install_key(new, old.verifier)
        self._rotation_seen = header.index
        return header

    def _install_key(self, new: note.Signer, old: note.Verifier) -> None:
        keys.write_public_file(self.old_public_key_path(old.key_id), old.vkey + "\n")
        try:
            os.replace(self.next_key_path, self.key_path)
        except FileNotFoundError:
            # Another process opening the log finished this rotation first; then host.key is the new key.
            if note.Signer(self.origin, keys.load_private_key(self.key_path)).verifier.vkey != new.verifier.vkey:
                raise LedgerError(f"the new key vanished from {self.next_key_path} before it replaced the host key",
                                  hint="run `op-dbus verify --full`, then `op-dbus key rotate` again") from None
        files.fsync_dir(self.key_path.parent)
        keys.write_public_file(self.public_key_path, new.verifier.vkey + "\n")
        self._signer = new

    def key_rotations(self) -> list[tuple[int, note.Verifier, note.Verifier]]:
        """Every key rotation in the log: (block index, old key, new key), in order."""
        with self.transaction("read", write=False) as db:
            rows = db.execute("SELECT idx, leaf FROM blocks WHERE kind = ? ORDER BY idx", (KEY_ROTATION,)).fetchall()
        return [(int(idx), *rotation_keys(BlockHeader.from_leaf(leaf))) for idx, leaf in rows]

    def _finish_rotation(self) -> None:
        """At open: complete a rotation whose block was written but whose key was not installed; drop one never written."""
        with self.transaction("read", write=False) as db:
            row = db.execute("SELECT idx, leaf FROM blocks WHERE kind = ? ORDER BY idx DESC LIMIT 1",
                             (KEY_ROTATION,)).fetchone()
        latest = None if row is None else rotation_keys(BlockHeader.from_leaf(row[1]))
        if row is not None:
            self._rotation_seen = int(row[0])
        if not self.next_key_path.exists():
            return
        keys.check_directory(self.next_key_path.parent, "key directory")
        pending = note.Signer(self.origin, keys.load_private_key(self.next_key_path))
        if latest is not None and latest[1].vkey == pending.verifier.vkey and self._signer.verifier.vkey != latest[1].vkey:
            self._install_key(pending, latest[0])
        # Otherwise its block is not written (yet: a rotation may be under way in another process); leave it to
        # `rotate_key`, the only one that removes it.

    def _follow_rotation(self, db: sqlite3.Connection, index: int | None) -> None:
        """Another process rotated the key since this one loaded it: sign with the new key, or refuse."""
        if index is None:
            self._rotation_seen = None
            return
        row = db.execute("SELECT leaf FROM blocks WHERE idx = ?", (index,)).fetchone()
        _old, new = rotation_keys(BlockHeader.from_leaf(row[0]))
        if new.vkey != self.verifier_key:
            private = keys.load_private_key(self.key_path)
            signer = note.Signer(self.origin, private)
            if signer.verifier.vkey != new.vkey:
                raise LedgerError(
                    f"the host key was rotated at block {index}, but {self.key_path} is not the new key "
                    f"({new.key_id.hex()}); nothing was appended",
                    hint="run `op-dbus verify --full`; restore the rotated key or rotate again")
            self._signer = signer
        self._rotation_seen = index

    def _frontier_for(self, db: sqlite3.Connection, size: int, head: str) -> merkle.Frontier:
        """The tree's right edge at `size`: from memory when nobody else appended since, else from the node table."""
        cached = self._frontier
        if cached is not None and cached.size == size and self._frontier_head == head:
            return merkle.Frontier(size, cached.hashes)
        hashes = [self.node(db, level, idx) for level, idx in merkle.Frontier.positions(size)]
        return merkle.Frontier(size, hashes)

    def node(self, db: sqlite3.Connection, level: int, idx: int) -> bytes:
        """The stored hash of the perfect Merkle subtree at (`level`, `idx`), read inside `db`'s transaction."""
        row = db.execute("SELECT hash FROM tree WHERE level = ? AND idx = ?", (level, idx)).fetchone()
        if row is None or not isinstance(row[0], bytes) or len(row[0]) != merkle.HASH_SIZE:
            raise LedgerCorrupt(
                f"{self.db_path}: the Merkle node (level {level}, index {idx}) is missing or damaged",
                hint="run a full verification ('op-dbus verify --full'); the log is not repaired automatically",
            )
        return row[0]

    # -- reading -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        with self._errors("read"):
            (n,) = self._conn.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM blocks").fetchone()
        return int(n)

    def head(self) -> BlockHeader | None:
        with self._errors("read"):
            row = self._conn.execute("SELECT leaf FROM blocks ORDER BY idx DESC LIMIT 1").fetchone()
        return None if row is None else BlockHeader.from_leaf(row[0])

    def headers(self, start: int = 0, stop: int | None = None) -> list[BlockHeader]:
        """Headers of blocks start <= index < stop, in order."""
        stop = (1 << 62) if stop is None else stop
        with self._errors("read"):
            rows = self._conn.execute(
                "SELECT leaf FROM blocks WHERE idx >= ? AND idx < ? ORDER BY idx", (max(start, 0), stop)
            ).fetchall()
        return [BlockHeader.from_leaf(leaf) for (leaf,) in rows]

    def get(self, index: int) -> Block:
        """A block with its changes and state, each checked against the hash in its header."""
        with self.transaction("read", write=False) as db:
            if index < 0:
                (n,) = db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM blocks").fetchone()
                index += n
            row = db.execute("SELECT leaf FROM blocks WHERE idx = ?", (index,)).fetchone()
            if row is None:
                raise BlockNotFound(f"no block {index} in the audit log ({len(self)} blocks)")
            header = BlockHeader.from_leaf(row[0])
            if header.index != index:
                raise LedgerCorrupt(f"block {index} holds the header of block {header.index}: the log was edited")
            changes = self._blob(db, header.changes_hash, index, "changes")
            state = self._blob(db, header.state_hash, index, "state")
        return Block(header, changes, state)

    def _blob(self, db: sqlite3.Connection, digest: str, index: int, what: str) -> Any:
        if not _HEX64.fullmatch(digest):
            raise LedgerCorrupt(f"block {index}: its {what} hash is not a SHA-256 hex digest")
        row = db.execute("SELECT data FROM blobs WHERE hash = ?", (bytes.fromhex(digest),)).fetchone()
        if row is None:
            raise LedgerCorrupt(f"block {index}: its {what} record {digest[:12]}… is missing")
        if row[0] is None:
            return None
        data = as_bytes(row[0])
        if _sha256_hex(data) != digest:
            raise LedgerCorrupt(f"block {index}: its {what} record does not match its hash: the log was edited")
        return json.loads(data)

    # -- tree heads, proofs, checkpoints -----------------------------------------------------------

    def _size_arg(self, db: sqlite3.Connection, size: int | None) -> int:
        (n,) = db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM blocks").fetchone()
        if size is None:
            return int(n)
        if not 0 <= size <= n:
            raise BlockNotFound(f"tree size {size} is beyond the log ({n} blocks)")
        return size

    def root(self, size: int | None = None) -> bytes:
        """The RFC 6962 tree head over the first `size` blocks (default: all)."""
        with self.transaction("read", write=False) as db:
            size = self._size_arg(db, size)
            return merkle.root(size, lambda level, idx: self.node(db, level, idx))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        with self.transaction("read", write=False) as db:
            size = self._size_arg(db, size)
            return merkle.inclusion_proof(index, size, lambda level, idx: self.node(db, level, idx))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        with self.transaction("read", write=False) as db:
            new = self._size_arg(db, new)
            return merkle.consistency_proof(old, new, lambda level, idx: self.node(db, level, idx))

    def checkpoint(self, size: int | None = None) -> str:
        """The signed checkpoint note for `size` blocks (default: the latest)."""
        with self._errors("read"):
            if size is None:
                row = self._conn.execute("SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
            else:
                row = self._conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if row is None:
            raise LedgerError(
                "the audit log has no checkpoint yet (it is empty)" if size is None else f"no checkpoint for size {size}"
            )
        return str(row[0])

    def vacuum(self) -> None:
        """Give the space of dropped records back to the file system (SQLite rewrites the file, crash-safely)."""
        with self._errors("vacuum"):
            self._conn.execute("VACUUM")

    # -- verification ------------------------------------------------------------------------------

    def prove(self, index: int) -> InclusionProof:
        """Prove block `index` is in the tree the latest signed checkpoint commits to, and that its stored
        changes and state are the ones its header names. Raises ProofError or LedgerCorrupt otherwise."""
        block = self.get(index)  # checks the changes/state records against the header's hashes
        signed = self.checkpoint()
        opened = note.open_note(signed, [self.verifier])
        head = note.parse_checkpoint(opened.text)
        if head.origin != self.origin:
            raise merkle.ProofError(f"the latest checkpoint names origin {head.origin!r}, not {self.origin!r}")
        if not index < head.size:
            raise merkle.ProofError(f"block {index} is not covered by the latest checkpoint (size {head.size})")
        proof = self.inclusion_proof(index, head.size)
        merkle.verify_inclusion(index, head.size, block.header.leaf_hash, proof, head.root)
        return InclusionProof(block, head.size, head.root, proof, signed)

    def verify_full(
        self,
        *,
        verifier_dir: Path | str | None = None,
        update: bool = True,
        all_signatures: bool = False,
    ) -> VerifyReport:
        """Check everything; see `op_dbus.ledger.verify.verify_full`."""
        from op_dbus.ledger.verify import verify_full

        return verify_full(
            self,
            verifier_dir=Path(verifier_dir) if verifier_dir is not None else self.state_dir / "verifier",
            update=update,
            all_signatures=all_signatures,
        )


def _corrupt(db_path: Path, exc: BaseException) -> LedgerCorrupt:
    return LedgerCorrupt(
        f"{db_path}: the audit log database is damaged ({exc}); it is not repaired automatically",
        hint="keep the damaged file for investigation and restore ledger.db from a backup or an export",
    )


def _prepare_db_file(db_path: Path, *, create: bool) -> None:
    """Create the database file 0600 before SQLite does (SQLite gives its -wal/-shm files the same mode)."""
    try:
        fd, st = files.open_checked(db_path, "audit log database", flags=os.O_RDWR | (os.O_CREAT if create else 0),
                                    error=keys.KeyFileError)
    except FileNotFoundError:
        raise LedgerError(f"no audit log at {db_path}") from None
    try:
        if st.st_size == 0 and stat.S_IMODE(st.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _connect(db_path: Path, busy_timeout: float) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(db_path, timeout=busy_timeout, isolation_level=None, check_same_thread=True)
    except sqlite3.Error as exc:
        raise LedgerError(f"cannot open {db_path}: {exc}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LedgerError(f"{db_path}: cannot switch the database to WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA trusted_schema = OFF")
        conn.execute("PRAGMA cell_size_check = ON")
        conn.execute("PRAGMA foreign_keys = OFF")
    except sqlite3.OperationalError as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise LedgerError(f"{db_path}: another process held the audit log for more than {busy_timeout:g}s") from exc
        raise _corrupt(db_path, exc) from exc
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _corrupt(db_path, exc) from exc
    return conn


def _init_schema(conn: sqlite3.Connection, db_path: Path, origin: str | None, private: Any) -> str:
    """Create the tables on first use, check the format marker, and return the log's origin."""
    public = private.public_key().public_bytes_raw()
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise LedgerCorrupt(f"{db_path} is an SQLite database but not an op-dbus audit log")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if not meta:
                chosen = origin or default_origin(public)
                note.check_key_name(chosen)
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("format", FORMAT), ("schema", SCHEMA_VERSION), ("origin", chosen), ("created", _now())],
                )
                meta = {"format": FORMAT, "schema": SCHEMA_VERSION, "origin": chosen}
            if meta.get("format") != FORMAT or "origin" not in meta:
                raise LedgerCorrupt(f"{db_path} is not an op-dbus audit log (format marker missing)")
            if meta.get("schema") != SCHEMA_VERSION:
                raise LedgerError(
                    f"{db_path} has audit log schema {meta.get('schema')}, this op-dbus reads {SCHEMA_VERSION}"
                )
            if origin is not None and origin != meta["origin"]:
                raise LedgerError(f"{db_path} is the log {meta['origin']!r}, not {origin!r}")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise LedgerError(f"{db_path}: another process held the audit log too long") from exc
        raise _corrupt(db_path, exc) from exc
    except sqlite3.DatabaseError as exc:
        raise _corrupt(db_path, exc) from exc
    return str(meta["origin"])
