"""Full verification of an audit log against the verifier's own record of what it saw before."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from op_dbus.ledger import keys, merkle, note
from op_dbus.ledger.store import ZERO_HASH, VerifyReport, as_bytes

if TYPE_CHECKING:
    from op_dbus.ledger.store import Ledger

LAST_CHECKPOINT = "last-checkpoint"
TRUSTED_KEY = "trusted-key"
MAX_PROBLEMS = 50

_MISSING = object()
_sha256 = hashlib.sha256
_node = merkle.node_hash


class _Problems:
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.first_bad: int | None = None
        self.suppressed = 0

    def add(self, index: int | None, message: str) -> None:
        if index is not None and (self.first_bad is None or index < self.first_bad):
            self.first_bad = index
        if len(self.messages) < MAX_PROBLEMS:
            self.messages.append(message)
        else:
            self.suppressed += 1

    def __bool__(self) -> bool:
        return bool(self.messages)

    def as_list(self) -> list[str]:
        extra = [f"... and {self.suppressed} more problems"] if self.suppressed else []
        return self.messages + extra


class _Echo:
    """Adds messages to a problem list without moving its first bad index."""

    def __init__(self, inner: _Problems) -> None:
        self.inner = inner

    def add(self, index: int | None, message: str) -> None:
        self.inner.add(None, message)


def _read_verifier_state(
    verifier_dir: Path, current: note.Verifier, problems: _Problems, notes: list[str]
) -> tuple[note.Verifier, bool, note.Checkpoint | None]:
    """The trusted key (pinned on first use) and the last checkpoint this verifier accepted."""
    trusted, pinned = current, False
    key_file = verifier_dir / TRUSTED_KEY
    if key_file.exists():
        try:
            trusted = note.Verifier.from_vkey(key_file.read_text())
            pinned = True
        except (note.NoteError, UnicodeDecodeError, OSError) as exc:
            problems.add(None, f"the trusted key {key_file} is unreadable ({exc}); nothing can be checked against it")
            return current, True, None
        if trusted.vkey != current.vkey:
            notes.append(
                f"the host key ({current.name} {current.key_id.hex()}) is not the trusted key "
                f"({trusted.name} {trusted.key_id.hex()}) pinned in {key_file}"
            )
    last: note.Checkpoint | None = None
    cp_file = verifier_dir / LAST_CHECKPOINT
    if cp_file.exists():
        try:
            opened = note.open_note(cp_file.read_bytes(), [trusted])
            last = note.parse_checkpoint(opened.text)
        except (note.NoteError, OSError) as exc:
            problems.add(
                None, f"the last checkpoint this verifier saw ({cp_file}) does not verify with the trusted key: {exc}"
            )
    return trusted, pinned, last


def verify_full(ledger: Ledger, *, verifier_dir: Path, update: bool, all_signatures: bool) -> VerifyReport:
    """Recompute and cross-check everything in the log.

    Checks, for every block: its position (no gap, no swap: the header's index is its row), its
    `prev` link, that its changes and state records exist and hash to what the header says, the
    index columns; for every tree size: that a checkpoint exists, that its text is exactly the
    recomputed tree head, and that it names the trusted key (each Ed25519 signature is verified too
    with `all_signatures`; the latest one always is); that the cached Merkle nodes equal the
    recomputed ones; that no checkpoint signs more blocks than are stored; and that the log extends
    the last checkpoint this verifier accepted. On success the latest checkpoint becomes the new
    last-seen one (with `update`).
    """
    problems = _Problems()
    notes: list[str] = []
    trusted, pinned, last_seen = _read_verifier_state(verifier_dir, ledger.verifier, problems, notes)
    origin = ledger.origin
    if last_seen is not None and last_seen.origin != origin:
        problems.add(None, f"the verifier last saw log {last_seen.origin!r}, this is {origin!r}")
        last_seen = None
    trusted_id = trusted.key_id
    sig_prefix = f"\n{note.SIG_PREFIX}{trusted.name} "
    b64 = base64.b64encode
    b64decode = base64.b64decode

    with ledger._transaction("verify", write=False) as db:
        integrity = [r[0] for r in db.execute("PRAGMA quick_check(20)")]
        if integrity != ["ok"]:
            problems.add(None, "SQLite integrity check: " + "; ".join(map(str, integrity)))

        blob_ok: dict[bytes, bool | None] = {}
        for digest, data in db.execute("SELECT hash, data FROM blobs"):
            blob_ok[bytes(digest) if not isinstance(digest, str) else digest.encode()] = (
                None if data is None else _sha256(as_bytes(data)).digest() == digest
            )
        checkpoints: dict[Any, Any] = dict(db.execute("SELECT size, note FROM checkpoints"))

        levels: list[list[bytes]] = [[]]
        edge: list[bytes] = []
        prev = ZERO_HASH
        count = 0
        last_root: bytes | None = None
        root = merkle.EMPTY_ROOT
        for idx, leaf, kind_col, time_col in db.execute("SELECT idx, leaf, kind, time FROM blocks ORDER BY idx"):
            if idx != count:
                gap = f"{count}" if idx == count + 1 else f"{count} to {idx - 1}"
                problems.add(count, f"block {gap} missing: the stored blocks jump from {count - 1} to {idx}")
            if not isinstance(leaf, bytes):
                leaf = as_bytes(leaf)
            try:
                header = json.loads(leaf)
            except ValueError:
                header = None
            if not isinstance(header, dict):
                problems.add(idx, f"block {idx}: the header is not a JSON object")
            else:
                if header.get("index") != idx:
                    problems.add(
                        idx, f"block {idx}: holds the header of block {header.get('index')} (blocks swapped or moved)"
                    )
                if header.get("prev") != prev:
                    problems.add(idx, f"block {idx}: 'prev' is not the hash of the block before it")
                if header.get("kind") != kind_col or header.get("time") != time_col:
                    problems.add(idx, f"block {idx}: the kind/time index columns disagree with the header")
                for what in ("changes", "state"):
                    digest = header.get(f"{what}_hash")
                    try:
                        status = blob_ok.get(bytes.fromhex(digest), _MISSING)
                    except (TypeError, ValueError):
                        status = _MISSING
                    if status is _MISSING:
                        problems.add(idx, f"block {idx}: its {what} record is missing")
                    elif status is False:
                        problems.add(idx, f"block {idx}: its {what} record does not match the hash in the header (edited)")
            prev = _sha256(leaf).hexdigest()

            # Extend the rebuilt tree by one leaf; `edge` is its right edge (one hash per set bit of the size).
            h = _sha256(b"\x00" + leaf).digest()
            level0 = levels[0]
            level0.append(h)
            i, lvl = count, 0
            while i & 1:
                h = _node(edge.pop(), h)
                lvl += 1
                i >>= 1
                if lvl == len(levels):
                    levels.append([])
                levels[lvl].append(h)
            edge.append(h)
            count += 1
            root = edge[-1]
            for left in edge[-2::-1]:
                root = _node(left, root)
            if last_seen is not None and count == last_seen.size:
                last_root = root

            signed = checkpoints.pop(count, None)
            if signed is None:
                problems.add(idx, f"block {idx}: no signed checkpoint for tree size {count}")
                continue
            body = f"{origin}\n{count}\n{b64(root).decode()}\n"
            rest = signed[len(body) + len(sig_prefix) :] if isinstance(signed, str) else ""
            fast = isinstance(signed, str) and signed.startswith(body) and signed.startswith(sig_prefix, len(body))
            if fast and rest.endswith("\n") and "\n" not in rest[:-1]:
                try:
                    raw = b64decode(rest[:-1], validate=True)
                except (binascii.Error, ValueError):
                    raw = b""
                if len(raw) == 68 and raw[:4] == trusted_id:
                    if all_signatures and not trusted.verify(body, raw[4:]):
                        problems.add(idx, f"checkpoint {count}: the signature does not verify with the trusted key")
                    continue
            problems.add(idx, _explain_checkpoint(signed, body, count, trusted))

        size = count
        if checkpoints:
            beyond = sorted(k for k in checkpoints if isinstance(k, int) and k > size)
            if beyond:
                problems.add(
                    size,
                    f"the log has {size} blocks but holds a signed checkpoint for {beyond[-1]}: "
                    f"blocks {size} to {beyond[-1] - 1} were removed",
                )
            if len(beyond) != len(checkpoints):
                problems.add(None, "the checkpoint table holds entries for impossible tree sizes")

        latest = None
        if size:
            row = db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
            latest = row[0] if row else None
            if latest is not None and not _signature_ok(latest, trusted):
                bad = _first_bad_signature(db, size, trusted)
                problems.add(bad - 1, f"checkpoint {bad}: the signature does not verify with the trusted key")

        _check_tree_cache(db, levels, problems)

    if last_seen is not None:
        if last_seen.size > size:
            problems.add(
                size,
                f"the log has {size} blocks but this verifier saw {last_seen.size} before: "
                f"blocks {size} to {last_seen.size - 1} were removed",
            )
        elif last_root != last_seen.root:
            index = problems.first_bad if problems.first_bad is not None else 0
            problems.add(
                index,
                f"the first {last_seen.size} blocks are not those this verifier saw before: history was rewritten "
                f"(somewhere in blocks 0 to {last_seen.size - 1})",
            )

    ok = not problems
    report = VerifyReport(
        ok=ok,
        size=size,
        first_bad=problems.first_bad if not ok else None,
        problems=problems.as_list(),
        root=root.hex(),
        checkpoint=latest if ok else None,
        notes=notes,
    )
    if ok and update:
        _save_verifier_state(verifier_dir, trusted, pinned, latest, notes)
    return report


def _signature_ok(signed: str, trusted: note.Verifier) -> bool:
    try:
        note.open_note(signed, [trusted])
    except note.NoteError:
        return False
    return True


def _first_bad_signature(db: Any, size: int, trusted: note.Verifier) -> int:
    """The smallest tree size whose checkpoint signature fails, by bisection (signatures are only ever added)."""
    lo, hi = 1, size  # the checkpoint at `hi` is known bad
    while lo < hi:
        mid = (lo + hi) // 2
        row = db.execute("SELECT note FROM checkpoints WHERE size = ?", (mid,)).fetchone()
        if row is not None and _signature_ok(row[0], trusted):
            lo = mid + 1
        else:
            hi = mid
    return hi


def _explain_checkpoint(signed: Any, body: str, size: int, trusted: note.Verifier) -> str:
    index = size - 1
    if not isinstance(signed, str):
        return f"checkpoint {size}: not stored as text"
    try:
        parsed = note.parse(signed)
        cp = note.parse_checkpoint(parsed.text)
    except note.NoteError as exc:
        return f"checkpoint {size}: malformed ({exc})"
    if parsed.text != body:
        if cp.size != size:
            return f"checkpoint {size}: it claims tree size {cp.size}"
        if cp.origin != body.split("\n", 1)[0]:
            return f"checkpoint {size}: it names log {cp.origin!r}"
        return (
            f"block {index}: the tree head over blocks 0 to {index} differs from the signed checkpoint "
            f"{size} (block {index} was edited, replaced or reordered)"
        )
    names = ", ".join(f"{s.name} ({s.key_id.hex()})" for s in parsed.signatures)
    if not any(s.name == trusted.name and s.key_id == trusted.key_id for s in parsed.signatures):
        return f"checkpoint {size}: signed by {names}, not by the trusted key {trusted.name} ({trusted.key_id.hex()})"
    return f"checkpoint {size}: unexpected signature lines ({names})"


def _check_tree_cache(db: Any, levels: list[list[bytes]], problems: _Problems) -> None:
    """The stored perfect nodes (used for appends and proofs) must equal the rebuilt ones, none missing, none extra.

    When blocks were already found bad, node mismatches are their echo and do not move `first_bad`.
    """
    expected_next = [0] * len(levels)
    reported = 0
    if problems.first_bad is not None:
        problems = _Echo(problems)  # type: ignore[assignment]
    for level, idx, digest in db.execute("SELECT level, idx, hash FROM tree ORDER BY level, idx"):
        if reported >= 5:
            break
        if not isinstance(level, int) or not isinstance(idx, int) or level < 0 or idx < 0:
            problems.add(None, "the Merkle node table holds a malformed row")
            reported += 1
            continue
        if level >= len(levels) or idx >= len(levels[level]):
            problems.add(
                max(idx << level, len(levels[0])),
                f"the Merkle node table holds node (level {level}, index {idx}) beyond the log",
            )
            reported += 1
            continue
        if idx != expected_next[level]:
            problems.add(
                expected_next[level] << level,
                f"the Merkle node table lacks node (level {level}, index {expected_next[level]})",
            )
            reported += 1
        expected_next[level] = idx + 1
        if digest != levels[level][idx]:
            problems.add(idx << level, f"the Merkle node (level {level}, index {idx}) does not match the blocks it covers")
            reported += 1
    if reported < 5:
        for level, nodes in enumerate(levels):
            if expected_next[level] < len(nodes):
                problems.add(
                    expected_next[level] << level,
                    f"the Merkle node table lacks node (level {level}, index {expected_next[level]})",
                )


def _save_verifier_state(
    verifier_dir: Path, trusted: note.Verifier, pinned: bool, latest: str | None, notes: list[str]
) -> None:
    if not verifier_dir.exists():
        verifier_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys.check_directory(verifier_dir, "verifier directory")
    if not pinned:
        keys.write_private_file(verifier_dir / TRUSTED_KEY, trusted.vkey + "\n")
        notes.append(f"trusted key pinned on first use: {trusted.name} ({trusted.key_id.hex()})")
    if latest is not None:
        keys.write_private_file(verifier_dir / LAST_CHECKPOINT, latest)


def read_last_seen(verifier_dir: Path) -> str | None:
    """The checkpoint note this verifier accepted last, if any."""
    try:
        return (verifier_dir / LAST_CHECKPOINT).read_text()
    except FileNotFoundError:
        return None


__all__ = ["LAST_CHECKPOINT", "TRUSTED_KEY", "read_last_seen", "verify_full"]
