"""The audit log ("blockchain" in the commands): append-only blocks, Merkle tree, signed checkpoints.

    from op_dbus.ledger import Ledger
    with Ledger.open(state_dir) as log:
        header = log.append("apply", changes, state, actor={...}, summary="systemd: 2 changes")
        report = log.verify_full()          # report.ok, .size, .first_bad, .problems

A hash chain alone proves nothing against root, who can rewrite and rehash it. So the log follows
the transparency-log standards, and its history is anchored outside the database.

Storage (`<state_dir>/ledger.db`, SQLite, WAL, `synchronous=FULL`, mode 0600)
    blocks(idx, leaf, kind, time)   one row per block; `leaf` is the header (below) as RFC 8785
                                    canonical JSON: exactly these bytes are hashed, never a
                                    re-serialisation. `kind`/`time` are copies for lookups only.
    blobs(hash, data)               content-addressed records: SHA-256 -> canonical JSON bytes of a
                                    block's change list and of its state snapshot. Compaction may
                                    set `data` to NULL; the hash stays, so every proof stays valid.
    tree(level, idx, hash)          every complete ("perfect") Merkle subtree hash: derived data
                                    that makes append, tree heads and proofs O(log n).
    checkpoints(size, note)         one signed checkpoint per tree size, i.e. per block.
    meta                            format marker, schema version, origin.
Each append is one `BEGIN IMMEDIATE` transaction (block, records, tree nodes, checkpoint), so
concurrent writers are serialised and a block is whole or absent after a crash or kill -9.

Block header (the Merkle leaf), RFC 8785 canonical JSON:
    {"v": 1, "index": n, "prev": hex SHA-256 of block n-1's leaf bytes (64 zeros for block 0),
     "time": RFC 3339 UTC with microseconds, "kind": "genesis" | "apply" | "rollback" | ...,
     "actor": {...}, "summary": "...", "changes_hash": hex, "change_count": int,
     "state_hash": hex SHA-256 of the canonical state document (the "state hash" users see),
     "plugin_state_hashes": {plugin: hex SHA-256 of its canonical section}, "meta": {...} if any}
`BlockHeader.hash` (SHA-256 of the leaf) identifies a block; `BlockHeader.leaf_hash` is its RFC 6962
leaf hash. Integers outside +-(2^53 - 1), which RFC 8785 cannot represent, are recorded as decimal
strings (D-Bus uint64 values such as systemd's "infinity" are common); NaN/infinity are refused.

Merkle tree: RFC 6962 / RFC 9162 (leaf = SHA-256(0x00 || leaf bytes), node = SHA-256(0x01 || l || r)),
with inclusion and consistency proofs and their verifiers (`op_dbus.ledger.merkle`).

Checkpoints: C2SP tlog-checkpoint text (origin, size, base64 root) in a C2SP signed note, signed
with the host's Ed25519 key. The origin, also the key name, is fixed when the log is created:
`op-dbus/<hostname>/<first 8 hex digits of SHA-256(public key)>` unless the caller names it. The
private key is PKCS#8 PEM at `<state_dir>/host.key` (or `key_path`), created 0600 on first use; its
C2SP verifier key (`<origin>+<key ID>+<base64>`) is written beside it as `host.pub` when that is missing,
and never rewritten except by `Ledger.rotate_key`: a `key-rotation` block (state repeated, both keys in
its meta) whose checkpoint the old and the new key both sign; the new key waits in `host.key.next` until
the block is durable, and the old public key stays as `host.pub.<key ID>`. A key file or
directory that another user could write (or read, for the key), or that another non-root user owns,
is refused, like sshd's StrictModes.

Verification (`Ledger.verify_full`) recomputes every leaf hash, `prev` link, record hash, tree node
and tree head; requires a checkpoint for every size whose text is exactly the recomputed head and
whose signature line names the trusted key (the latest signature is always verified; every one
with `all_signatures=True`, ~0.12 ms each); refuses checkpoints beyond the stored blocks (a cut
tail). The verifier keeps its own state outside the database, in `<state_dir>/verifier/` or a
directory the caller gives (for real protection, one root on this host cannot reach):
`trusted-key` (the verifier key, pinned on first successful verification) and `last-checkpoint`
(the latest checkpoint it accepted). The log must extend that checkpoint: not shorter, same tree head at
that size. The host key must be the key the log is signed with now, and the pinned key one of the log's
keys; the pin moves forward only through key-rotation checkpoints whose two signatures verify.
`first_bad` names the first bad block. SQLite's `quick_check` runs
too; a damaged database file is reported as `LedgerCorrupt`, never repaired. Work is split over
two cores: the tree and checkpoint pass here, SQLite's check in a thread, and (above 20,000 blocks)
the header, link and record checks in a child process (`_linkcheck.py`, standard library only).

Built on top: exports with inclusion proofs (`export`), checked by the standalone
`op_dbus.audit_verify`; archive and compaction (`archive`), which drop record contents only; search over
a derived FTS5 index in its own database (`search`); witness cosignatures received from collectors
(`cosignature`: C2SP cosignature/v1, kept in their own table `cosignatures`, shipped in exports).
"""

from __future__ import annotations

from op_dbus.ledger.canonical import CanonicalError, canonical
from op_dbus.ledger.keys import KeyFileError
from op_dbus.ledger.merkle import ProofError, verify_consistency, verify_inclusion
from op_dbus.ledger.note import NoteError
from op_dbus.ledger.store import (
    Block,
    BlockHeader,
    BlockNotFound,
    InclusionProof,
    Ledger,
    LedgerCorrupt,
    LedgerVerificationFailed,
    VerifyReport,
    canonical_state,
)

__all__ = [
    "Block",
    "BlockHeader",
    "BlockNotFound",
    "CanonicalError",
    "InclusionProof",
    "KeyFileError",
    "Ledger",
    "LedgerCorrupt",
    "LedgerVerificationFailed",
    "NoteError",
    "ProofError",
    "VerifyReport",
    "canonical",
    "canonical_state",
    "verify_consistency",
    "verify_inclusion",
]
