"""Archive and compaction: drop old blocks' records from the database while every hash and proof stays valid.

Headers, the Merkle tree and the checkpoints are never touched; only the `data` of content-addressed
records goes (set to NULL, the hash row stays), so `verify --full` and every inclusion proof still
pass and `Ledger.get` reads such a record as None.

  archive(before)  writes blocks 0..k-1 (every block older than `before`) with their records, proofs
                   and the latest checkpoint to an export file that `op_dbus.audit_verify` checks on
                   its own: written to a temporary file, fsynced, checked, renamed into place and the
                   directory fsynced; only then are those blocks' records dropped, in one transaction.
  compact(keep)    drops the state snapshots of all but the last `keep` blocks; change lists stay.

A record shared with a block that keeps its records (content addressing makes identical states one
record) is kept. The head block's state always stays: `verify --current` compares against it.
A kill at any point leaves either the old database or the new one, and an archive file that verifies.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from op_dbus import files
from op_dbus.errors import InvalidInput, LedgerError
from op_dbus.ledger.export import iter_export, read_view
from op_dbus.ledger.store import Ledger, as_bytes

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass
class Outcome:
    blocks: int  # blocks whose records were considered
    dropped: int  # records whose data was dropped
    bytes_freed: int
    path: str | None = None  # the archive file, if any
    first: int | None = None
    last: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_date(text: str) -> str:
    """A date or date-time (ISO 8601; UTC unless it says otherwise) as the log's time format, for comparison."""
    value = text.strip()
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise InvalidInput(f"date {text!r}: expected ISO 8601, such as 2026-01-31 or 2026-01-31T12:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _hashes(leaf: Any) -> tuple[str | None, str | None]:
    try:
        header = json.loads(as_bytes(leaf))
        changes, state = header.get("changes_hash"), header.get("state_hash")
    except (ValueError, AttributeError):
        return None, None
    ok = [h if isinstance(h, str) and _HEX64.fullmatch(h) else None for h in (changes, state)]
    return ok[0], ok[1]


def _drop(db: Any, drop: set[str], keep: set[str]) -> tuple[int, int]:
    """Set the data of records `drop - keep` to NULL; return (records dropped, bytes freed)."""
    dropped = freed = 0
    for digest in sorted(drop - keep):
        key = bytes.fromhex(digest)
        row = db.execute("SELECT length(data) FROM blobs WHERE hash = ? AND data IS NOT NULL", (key,)).fetchone()
        if row is None:
            continue
        db.execute("UPDATE blobs SET data = NULL WHERE hash = ?", (key,))
        dropped += 1
        freed += int(row[0] or 0)
    return dropped, freed


def compact(ledger: Ledger, *, keep: int = 1) -> Outcome:
    """Drop the state snapshots of every block but the last `keep` (at least 1); one write transaction."""
    if keep < 1:
        raise InvalidInput("compact must keep the state of at least the last block (verify --current needs it)")
    with ledger.transaction("compact", write=True) as db:
        rows = db.execute("SELECT idx, leaf FROM blocks ORDER BY idx").fetchall()
        cut = max(0, len(rows) - keep)
        drop: set[str] = set()
        kept: set[str] = set()
        for n, (_idx, leaf) in enumerate(rows):
            changes, state = _hashes(leaf)
            if changes:
                kept.add(changes)
            if state:
                (drop if n < cut else kept).add(state)
        dropped, freed = _drop(db, drop, kept)
    return Outcome(blocks=cut, dropped=dropped, bytes_freed=freed, first=0 if cut else None,
                   last=cut - 1 if cut else None)


def default_archive_path(ledger: Ledger, first: int, last: int) -> Path:
    return ledger.state_dir / "archive" / f"blocks-{first:08d}-{last:08d}.json"


def archive(ledger: Ledger, before: str, path: Path | None = None) -> Outcome:
    """Move the records of every block older than `before` (a `parse_date` string) to an archive file."""
    from op_dbus import audit_verify

    with ledger.transaction("archive", write=False) as db:
        row = db.execute("SELECT MIN(idx) FROM blocks WHERE time >= ?", (before,)).fetchone()
        (size,) = db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM blocks").fetchone()
    # A contiguous prefix: a block older than the date that follows a newer one (a clock stepped back) stays.
    count = int(size) if row[0] is None else int(row[0])
    if count == 0:
        return Outcome(blocks=0, dropped=0, bytes_freed=0)
    view = read_view(ledger, 0, count - 1)
    text = "".join(iter_export(view))
    # Check the file as an auditor would before anything is dropped: a damaged log is never archived away.
    report = audit_verify.verify_export(json.loads(text), ledger.verifier_key)
    if not report.ok:
        raise LedgerError(f"the blocks to archive do not verify ({report.problems[0]}); nothing was archived",
                          hint="run `op-dbus verify --full`")
    path = Path(path) if path is not None else default_archive_path(ledger, 0, count - 1)
    if path.exists():
        # An archive run killed after writing its file resumes here: the same blocks, verified, are not rewritten.
        if not _same_archive(path, view, ledger.verifier_key):
            raise InvalidInput(f"{path} exists already and is not an archive of these blocks; "
                               "choose another --file or move it away")
    else:
        files.trusted_dir(path.parent, "archive directory")
        files.atomic_write(path, text.encode(), 0o600, replace=False, what="archive")

    with ledger.transaction("archive", write=True) as db:
        rows = db.execute("SELECT idx, leaf FROM blocks ORDER BY idx").fetchall()
        drop: set[str] = set()
        kept: set[str] = set()
        for idx, leaf in rows:
            changes, state = _hashes(leaf)
            # The head keeps its records even when it is old: verify --current compares against its state.
            target = drop if idx < count and idx != len(rows) - 1 else kept
            target.update(h for h in (changes, state) if h)
        dropped, freed = _drop(db, drop, kept)
    return Outcome(blocks=count, dropped=dropped, bytes_freed=freed, path=str(path), first=0, last=count - 1)


def _same_archive(path: Path, view: Any, vkey: str) -> bool:
    from op_dbus import audit_verify

    try:
        doc = json.loads(files.read_checked(path, "archive", limit=1 << 34))
        report = audit_verify.verify_export(doc, vkey)
        leaves = [b.get("leaf_hash") for b in doc["blocks"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, audit_verify.Unreadable):
        return False
    held = sum((b.changes is not None) + (b.state is not None) for b in view.blocks)
    if not report.ok or report.with_changes + report.with_state < held:
        return False  # it must hold at least every record the log still has
    from op_dbus.ledger import merkle

    return leaves == [merkle.leaf_hash(b.leaf).hex() for b in view.blocks]
