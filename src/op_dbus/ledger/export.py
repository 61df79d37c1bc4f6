"""Self-describing exports of the audit log: blocks with their exact bytes, inclusion proofs and the signed checkpoint.

An export is one JSON object (format "op-dbus audit log export", version 1):

    format, version, about      what this is and how to check it (`about` is prose for the reader)
    origin, verifier_key        the log's name and the key its checkpoints are signed with (informational:
                                an auditor checks against a copy of host.pub obtained independently)
    exported_at                 when (UTC)
    tree_size, root, checkpoint the latest signed checkpoint (C2SP note) and its tree size and head (hex)
    range                       {"first": A, "last": B}, the blocks included: 0 to tree_size - 1 for the whole
                                log, anything less is a range export (an auditor checks the blocks against it)
    key_rotations               one entry per `key-rotation` block up to tree_size: index, old_key, new_key (C2SP
                                verifier keys), checkpoint (the note of size index + 1, signed by both keys) and
                                consistency_proof (RFC 9162, from that size to tree_size)
    blocks                      one object per block, in order:
        index                   the block index
        header                  the block header exactly as hashed (RFC 8785 canonical JSON, as a string)
        leaf_hash               SHA-256(0x00 || header), hex
        inclusion_proof         RFC 9162 audit path of the block in the tree of `tree_size` leaves, hex
        changes, state          the change list / state snapshot exactly as hashed (canonical JSON text),
                                or null when the export leaves them out or the log no longer holds them
    cosignatures                witness cosignature lines (C2SP tlog-cosignature) on that checkpoint, as the
                                host received them from its collectors ([] when none cosigned this size yet)

`op_dbus.audit_verify` checks one with nothing but the file and the host's public key. The blocks are
read in one read transaction (a consistent view while other processes append), then the JSON is written
block by block, never built whole in memory.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from op_dbus.errors import InvalidInput, LedgerError
from op_dbus.ledger import cosignature, merkle, note
from op_dbus.ledger.store import KEY_ROTATION, BlockHeader, Ledger, LedgerVerificationFailed, as_bytes

HEX64 = re.compile(r"[0-9a-f]{64}")
EXPORT_FORMAT = "op-dbus audit log export"
EXPORT_VERSION = 1
ABOUT = [
    "Every block of an op-dbus audit log in the range, with its header exactly as hashed, its inclusion proof",
    "in the Merkle tree (RFC 6962/9162) and the log's latest checkpoint (a C2SP signed note, Ed25519).",
    "To check it: python -m op_dbus.audit_verify THIS_FILE --key host.pub  (host.pub from the host, not from",
    "this file). Leaf hash = SHA-256(0x00 || header bytes); each header's prev = SHA-256 of the previous header;",
    "changes/state (when present) hash with SHA-256 to the header's changes_hash/state_hash.",
]


@dataclass(frozen=True)
class ExportedBlock:
    index: int
    leaf: bytes
    changes: bytes | None
    state: bytes | None


@dataclass
class ExportView:
    """One consistent read of a block range: the blocks, the latest checkpoint, and a proof maker for its tree."""

    origin: str
    verifier_key: str
    tree_size: int
    root: bytes
    checkpoint: str
    blocks: list[ExportedBlock]
    proof: Callable[[int], list[bytes]]
    rotations: list[dict[str, Any]] = field(default_factory=list)
    cosignatures: list[str] = field(default_factory=list)


def parse_range(text: str, size: int) -> tuple[int, int]:
    """`A-B`, `A-`, `-B` or `N` (inclusive) into (first, last) within a log of `size` blocks."""
    first_s, sep, last_s = text.partition("-")
    try:
        first = int(first_s) if first_s.strip() else 0
        last = (int(last_s) if last_s.strip() else size - 1) if sep else first
    except ValueError:
        raise InvalidInput(f"range {text!r}: expected A-B (block indexes, inclusive), A-, -B or N") from None
    if first < 0 or last < first:
        raise InvalidInput(f"range {text!r}: the first block must be >= 0 and not after the last")
    if last >= size:
        raise InvalidInput(f"range {text!r}: the log has {size} block(s) (0..{size - 1})")
    return first, last


def read_view(ledger: Ledger, first: int = 0, last: int | None = None, *, payloads: bool = True) -> ExportView:
    """Read blocks first..last (inclusive) and the latest checkpoint in one read transaction.

    Refuses (`LedgerVerificationFailed`, exit 3) a latest checkpoint whose signature does not verify
    with the host key or that does not cover exactly the stored blocks, and a block row missing from
    the range: an export must never be quietly shorter than the log it claims to be.
    """
    with ledger.transaction("export", write=False) as db:
        row = db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        if row is None:
            raise LedgerError("the audit log is empty: nothing to export")
        size, signed = int(row[0]), str(row[1])
        head = _open_latest(ledger, size, signed)
        (stored, count) = db.execute("SELECT COALESCE(MAX(idx) + 1, 0), COUNT(*) FROM blocks").fetchone()
        if stored != head.size or count != head.size:
            raise LedgerVerificationFailed(
                f"the latest signed checkpoint covers {head.size} blocks but the log holds {count} block row(s) "
                f"(indexes up to {stored - 1}): block rows are missing or extra; nothing was exported",
                hint="run `op-dbus verify --full` to find the first bad block")
        last = head.size - 1 if last is None else last
        if not 0 <= first <= last < head.size:
            raise InvalidInput(f"blocks {first}..{last} are not all in the log ({head.size} blocks)")
        blocks = []
        rows = db.execute("SELECT idx, leaf FROM blocks WHERE idx >= ? AND idx <= ? ORDER BY idx", (first, last))
        for idx, leaf in rows.fetchall():
            raw = as_bytes(leaf)
            changes = state = None
            if payloads:
                changes, state = _records(db, raw)
            blocks.append(ExportedBlock(int(idx), raw, changes, state))
        if [b.index for b in blocks] != list(range(first, last + 1)):
            raise LedgerVerificationFailed(f"blocks {first}..{last} are not all stored: block rows are missing; "
                                           "nothing was exported", hint="run `op-dbus verify --full`")
        nodes = _NodeCache(ledger, db)
        proofs = {b.index: merkle.inclusion_proof(b.index, head.size, nodes.get) for b in blocks}
        rotations = key_rotations(ledger, db, head.size, nodes.get)
    cosigned = [c.line for c in cosignature.for_size(str(ledger.db_path), head.size)]
    return ExportView(ledger.origin, ledger.verifier_key, head.size, head.root, signed, blocks,
                      lambda index: proofs[index], rotations, cosigned)


def _open_latest(ledger: Ledger, size: int, signed: str) -> note.Checkpoint:
    """The latest checkpoint, only once its signature verifies with the host key and it names this log and size."""
    try:
        opened = note.open_note(signed, [ledger.verifier])
        head = note.parse_checkpoint(opened.text)
    except note.NoteError as exc:
        raise LedgerVerificationFailed(
            f"the latest checkpoint (tree size {size}) does not verify: {exc}; nothing was exported",
            hint="run `op-dbus verify --full` to find the first bad checkpoint") from exc
    if head.origin != ledger.origin or head.size != size:
        raise LedgerVerificationFailed(
            f"the latest checkpoint stored for tree size {size} names {head.origin!r} size {head.size}; "
            "nothing was exported", hint="run `op-dbus verify --full`")
    return head


def key_rotations(ledger: Ledger, db: Any, size: int, get: Callable[[int, int], bytes]) -> list[dict[str, Any]]:
    """Each key rotation up to `size`: the keys, the checkpoint both signed, and the proof that `size` extends it.

    With these an auditor holding a public key from before a rotation follows it to the key that signs now.
    """
    out = []
    rows = db.execute("SELECT idx, leaf FROM blocks WHERE kind = ? AND idx < ? ORDER BY idx", (KEY_ROTATION, size))
    for idx, leaf in rows.fetchall():
        rotation = BlockHeader.from_leaf(as_bytes(leaf)).meta.get("rotation")
        if not isinstance(rotation, dict):
            raise LedgerVerificationFailed(f"block {idx} is a key rotation that names no keys; nothing was exported",
                                           hint="run `op-dbus verify --full`")
        out.append({"index": int(idx), "old_key": rotation.get("old_key"), "new_key": rotation.get("new_key"),
                    "checkpoint": ledger.checkpoint(int(idx) + 1),
                    "consistency_proof": [h.hex() for h in merkle.consistency_proof(int(idx) + 1, size, get)]})
    return out


def _records(db: Any, leaf: bytes) -> tuple[bytes | None, bytes | None]:
    """The stored bytes of a block's changes and state records (None when absent or compacted), exactly as stored."""
    try:
        header = json.loads(leaf)
        hashes = [header.get("changes_hash"), header.get("state_hash")]
    except (ValueError, AttributeError):
        return None, None  # an unreadable header is exported as it is; the auditor names it
    out: list[bytes | None] = []
    for digest in hashes:
        data = None
        if isinstance(digest, str) and HEX64.fullmatch(digest):
            row = db.execute("SELECT data FROM blobs WHERE hash = ?", (bytes.fromhex(digest),)).fetchone()
            data = as_bytes(row[0]) if row is not None and row[0] is not None else None
        out.append(data)
    return out[0], out[1]


class _NodeCache:
    """Perfect-subtree hashes read once each: the proofs of neighbouring blocks share most of their nodes."""

    def __init__(self, ledger: Ledger, db: Any) -> None:
        self._ledger = ledger
        self._db = db
        self._cache: dict[tuple[int, int], bytes] = {}

    def get(self, level: int, idx: int) -> bytes:
        key = (level, idx)
        h = self._cache.get(key)
        if h is None:
            h = self._cache[key] = self._ledger.node(self._db, level, idx)
        return h


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "surrogatepass")


def block_entry(view: ExportView, block: ExportedBlock) -> dict[str, Any]:
    return {
        "index": block.index,
        "header": _text(block.leaf),
        "leaf_hash": merkle.leaf_hash(block.leaf).hex(),
        "inclusion_proof": [h.hex() for h in view.proof(block.index)],
        "changes": _text(block.changes),
        "state": _text(block.state),
    }


def iter_export(view: ExportView) -> Iterator[str]:
    """The export document as JSON text chunks, blocks streamed one per line."""
    head = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "about": ABOUT,
        "origin": view.origin,
        "verifier_key": view.verifier_key,
        "exported_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "tree_size": view.tree_size,
        "root": view.root.hex(),
        "checkpoint": view.checkpoint,
        "range": {"first": view.blocks[0].index, "last": view.blocks[-1].index} if view.blocks else None,
        "key_rotations": view.rotations,
    }
    text = json.dumps(head, indent=1)
    yield text[:-2] + ',\n "blocks": [\n'
    for n, block in enumerate(view.blocks):
        yield ("" if n == 0 else ",\n") + json.dumps(block_entry(view, block))
    # After the blocks, so the head keeps its layout.
    yield '\n ],\n "cosignatures": ' + json.dumps(view.cosignatures) + "\n}\n"


def write_export(ledger: Ledger, out: IO[str], first: int = 0, last: int | None = None, *,
                 payloads: bool = True) -> ExportView:
    view = read_view(ledger, first, last, payloads=payloads)
    for chunk in iter_export(view):
        out.write(chunk)
    return view


def header_of(block: ExportedBlock) -> BlockHeader:
    return BlockHeader.from_leaf(block.leaf)
