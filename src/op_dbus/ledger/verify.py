"""Full verification of an audit log against the verifier's own record of what it saw before."""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from op_dbus import files
from op_dbus.ledger import _linkcheck, keys, merkle, note
from op_dbus.ledger.store import VerifyReport, as_bytes

if TYPE_CHECKING:
    from op_dbus.ledger.store import Ledger

LAST_CHECKPOINT = "last-checkpoint"
TRUSTED_KEY = "trusted-key"
MAX_PROBLEMS = 50
# Above this many blocks, the header/link/record checks run in a child process so that they use
# the other core instead of competing with the tree pass for the GIL.
CHILD_THRESHOLD = 20_000

_sha256 = hashlib.sha256


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

    def merge(self, found: dict[str, Any]) -> None:
        for index, message in found["problems"]:
            self.add(index, message)
        self.suppressed += found["suppressed"]
        self.add_index(found["first_bad"])

    def add_index(self, index: int | None) -> None:
        if index is not None and (self.first_bad is None or index < self.first_bad):
            self.first_bad = index

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


class _TreeScan:
    """The tree pass over the blocks, in batches: rebuild every perfect node and check the checkpoint of every size."""

    def __init__(
        self,
        origin: str,
        history: KeyHistory,
        checkpoints: dict[Any, Any],
        problems: _Problems,
        all_signatures: bool,
        remember_size: int,
    ) -> None:
        self.origin = origin
        self.history = history
        self.checkpoints = checkpoints
        self.problems = problems
        self.all_signatures = all_signatures
        self.remember_size = remember_size
        self.size = 0
        self.levels: list[list[bytes]] = [[]]
        self.edge: list[bytes] = []
        self.root = merkle.EMPTY_ROOT
        self.last_root: bytes | None = None
        self._rotations = list(history.rotations)  # still ahead of the scan
        self._next_rotation = self._rotations[0][0] + 1 if self._rotations else -1
        self._use_key(history.keys[0])

    def _use_key(self, trusted: note.Verifier) -> None:
        self.trusted = trusted
        # A checkpoint we wrote is `<text>\n— <name> <base64(key ID || signature)>\n`: 92 base64
        # characters, the first five of which spell 30 of the key ID's 32 bits and the sixth the last
        # two. Checking those is enough to name the signing key; `all_signatures` verifies each one.
        kid = base64.b64encode(trusted.key_id + bytes(64)).decode()
        self.sig_prefix = f"\n{note.SIG_PREFIX}{trusted.name} {kid[:5]}"
        self.sig_len = len(self.sig_prefix) - 5 + 92 + 1
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        self.sixth = frozenset(c for i, c in enumerate(alphabet) if i >> 4 == trusted.key_id[3] & 3)

    def add(self, leaves: list[Any]) -> None:
        sha256 = _sha256
        # Extend the rebuilt tree leaf by leaf; `edge` is its right edge (one hash per set bit of the
        # size), and folding it gives the tree head at every size, which every checkpoint must match.
        levels, edge = self.levels, self.edge
        level0 = levels[0]
        roots = []
        size = self.size
        for (leaf,) in leaves:
            if type(leaf) is not bytes:
                leaf = as_bytes(leaf)
            h = sha256(b"\x00" + leaf).digest()
            level0.append(h)
            i, lvl = size, 0
            while i & 1:
                h = sha256(b"\x01" + edge.pop() + h).digest()
                lvl += 1
                i >>= 1
                if lvl == len(levels):
                    levels.append([])
                levels[lvl].append(h)
            edge.append(h)
            size += 1
            for left in edge[-2::-1]:
                h = sha256(b"\x01" + left + h).digest()
            roots.append(h)
        first = self.size + 1
        self.size = size
        if roots:
            self.root = roots[-1]
        if first <= self.remember_size <= size:
            self.last_root = roots[self.remember_size - first]

        problems = self.problems
        b64 = base64.b64encode
        pop = self.checkpoints.pop
        origin, sig_prefix, sig_len, sixth = self.origin, self.sig_prefix, self.sig_len, self.sixth
        for k, root in enumerate(roots):
            n = first + k
            signed = pop(n, None)
            body = f"{origin}\n{n}\n{b64(root).decode()}\n"
            if n == self._next_rotation:
                # From here on the next key signs: the fast path's expected signature prefix changes with it.
                self._rotation_checkpoint(n, signed, body)
                sig_prefix, sig_len, sixth = self.sig_prefix, self.sig_len, self.sixth
                continue
            if signed is None:
                problems.add(n - 1, f"block {n - 1}: no signed checkpoint for tree size {n}")
                continue
            start = len(body) + len(sig_prefix)
            if (
                type(signed) is str
                and len(signed) == len(body) + sig_len
                and signed.startswith(body)
                and signed.startswith(sig_prefix, len(body))
                and signed[start] in sixth
                and signed[-1] == "\n"
            ):
                if not self.all_signatures or self._signature_verifies(body, signed[start - 5 : -1]):
                    continue
                problems.add(n - 1, f"checkpoint {n}: the signature does not verify with the trusted key")
                continue
            problems.add(n - 1, _explain_checkpoint(signed, body, n, self.trusted))

    def _rotation_checkpoint(self, n: int, signed: Any, body: str) -> None:
        """The checkpoint of a key-rotation block: the old and the new key must both sign exactly the tree head."""
        index, old, new = self._rotations[0]
        try:
            if signed is None:
                raise note.NoteError(f"there is no checkpoint for tree size {n}")
            if not isinstance(signed, str):
                raise note.NoteError("not stored as text")
            text = note.open_note(signed, [old]).text
            note.open_note(signed, [new])
            if text != body:
                raise note.NoteError("its text is not the tree head over the blocks")
        except note.NoteError as exc:
            self.problems.add(index, f"checkpoint {n} of the key rotation at block {index} ({old.key_id.hex()} -> "
                                     f"{new.key_id.hex()}) is not signed by both keys: {exc}")
        self._rotated()

    def _rotated(self) -> None:
        _index, _old, new = self._rotations.pop(0)
        self._next_rotation = self._rotations[0][0] + 1 if self._rotations else -1
        self._use_key(new)

    def _signature_verifies(self, body: str, b64sig: str) -> bool:
        try:
            raw = base64.b64decode(b64sig, validate=True)
        except ValueError:
            return False
        return len(raw) == 68 and raw[:4] == self.trusted.key_id and self.trusted.verify(body, raw[4:])


class KeyHistory:
    """The keys that signed the log, in order: the first key, then each key-rotation block's new key.

    `rotations` holds (block index, old key, new key); the checkpoint of size index + 1 is signed by both,
    every later one by the new key.
    """

    def __init__(self, first: note.Verifier, rotations: list[tuple[int, note.Verifier, note.Verifier]]) -> None:
        self.rotations = rotations
        self.keys = [first] + [new for _, _, new in rotations]

    @property
    def current(self) -> note.Verifier:
        return self.keys[-1]

    def key_for(self, size: int) -> note.Verifier:
        """The key that signs the checkpoint of `size` (for a rotation's own checkpoint: the new one)."""
        key = self.keys[0]
        for index, _old, new in self.rotations:
            if size > index:
                key = new
        return key

    def position(self, key: note.Verifier) -> int | None:
        return next((i for i, k in enumerate(self.keys) if k.vkey == key.vkey), None)


def _key_history(db: Any, anchor: note.Verifier, problems: _Problems) -> KeyHistory:
    """The log's key history from its key-rotation blocks; `anchor` is the first key when there was no rotation."""
    from op_dbus.ledger.store import KEY_ROTATION, BlockHeader, LedgerCorrupt, rotation_keys

    rotations: list[tuple[int, note.Verifier, note.Verifier]] = []
    for idx, leaf in db.execute("SELECT idx, leaf FROM blocks WHERE kind = ? ORDER BY idx", (KEY_ROTATION,)):
        try:
            old, new = rotation_keys(BlockHeader.from_leaf(leaf))
        except LedgerCorrupt as exc:
            problems.add(idx, str(exc))
            continue
        if rotations and old.vkey != rotations[-1][2].vkey:
            problems.add(idx, f"block {idx}: the key rotation starts from key {old.key_id.hex()}, but the key in use "
                              f"was {rotations[-1][2].key_id.hex()}")
        if old.name != new.name:
            problems.add(idx, f"block {idx}: the key rotation renames the key ({old.name!r} -> {new.name!r})")
        rotations.append((int(idx), old, new))
    return KeyHistory(rotations[0][1] if rotations else anchor, rotations)


def _link_check(db_path: Path, busy_timeout: float, in_child: bool) -> dict[str, Any]:
    """Headers, `prev` links and records (see `_linkcheck`), in a child process or in this one."""
    if in_child:
        try:
            proc = subprocess.run(
                [sys.executable, "-I", _linkcheck.__file__, str(db_path), str(busy_timeout)],
                capture_output=True,
                check=False,
            )
        except OSError:
            proc = None
        if proc is not None and proc.returncode == 3:
            message = proc.stderr.decode(errors="replace")
            if "locked" in message or "busy" in message:
                raise sqlite3.OperationalError(message)
            raise sqlite3.DatabaseError(message)
        if proc is not None and proc.returncode == 0:
            result: dict[str, Any] = json.loads(proc.stdout)
            return result
    return _linkcheck.check(str(db_path), busy_timeout)


def _quick_check(db_path: Path, busy_timeout: float) -> list[Any]:
    """SQLite's own consistency check of the file (pages, b-trees, indexes); C code that leaves the GIL free."""
    conn = sqlite3.connect(db_path, timeout=busy_timeout, isolation_level=None)
    try:
        return [row[0] for row in conn.execute("PRAGMA quick_check(20)")]
    finally:
        conn.close()


def _read_verifier_state(
    verifier_dir: Path, current: note.Verifier, problems: _Problems
) -> tuple[note.Verifier | None, str | None]:
    """The trusted key pinned by an earlier verification (None on first use), and the last checkpoint it accepted."""
    key_file = verifier_dir / TRUSTED_KEY
    if not key_file.exists():
        return None, None
    try:
        pinned = note.Verifier.from_vkey(
            files.read_checked(key_file, "trusted key", limit=keys.MAX_KEY_FILE, error=keys.KeyFileError).decode())
    except (note.NoteError, UnicodeDecodeError, OSError) as exc:
        problems.add(None, f"the trusted key {key_file} is unreadable ({exc}); nothing can be checked against it")
        return current, None
    try:
        last = read_last_seen(verifier_dir)
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(None, f"the last checkpoint this verifier saw ({verifier_dir / LAST_CHECKPOINT}) is unreadable: "
                           f"{exc}")
        last = None
    return pinned, last


def _check_keys(
    history: KeyHistory, host: note.Verifier, pinned: note.Verifier | None, key_file: Path, pub_file: Path,
    problems: _Problems, notes: list[str],
) -> None:
    """The host key must be the log's current key, the pinned key one of the log's keys, host.pub the current key."""
    current = history.current
    if pinned is not None:
        at = history.position(pinned)
        if at is None:
            problems.add(None, f"the log is signed by key {current.key_id.hex()}, not by the trusted key "
                               f"{pinned.key_id.hex()} pinned in {key_file}, and no key-rotation block signed by "
                               "both leads from one to the other: the host key was replaced")
        elif at < len(history.keys) - 1:
            notes.append(f"the trusted key follows {len(history.keys) - 1 - at} key rotation(s) signed by both keys: "
                         f"{pinned.key_id.hex()} -> {current.key_id.hex()}")
    if host.vkey != current.vkey:
        problems.add(None, f"the host key ({host.key_id.hex()}, in host.key) is not the key that signs the log "
                           f"({current.key_id.hex()}): host.key was replaced without `op-dbus key rotate`")
    try:
        published = files.read_checked(pub_file, "host public key", limit=keys.MAX_KEY_FILE,
                                       error=keys.KeyFileError).decode().strip()
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(None, f"{pub_file} is unreadable ({exc})")
        return
    if published != current.vkey:
        problems.add(None, f"{pub_file} does not name the key that signs the log ({current.key_id.hex()}): "
                           "auditors who copy it would be misled")


def verify_full(ledger: Ledger, *, verifier_dir: Path, update: bool, all_signatures: bool) -> VerifyReport:
    """Recompute and cross-check everything in the log.

    Checks, for every block: its position (no gap, no swap: the header's index is its row), its
    `prev` link, that its changes and state records exist and hash to what the header says, the
    index columns; for every tree size: that a checkpoint exists, that its text is exactly the
    recomputed tree head, and that it names the trusted key (each Ed25519 signature is verified too
    with `all_signatures`; the latest one always is); that the cached Merkle nodes equal the
    recomputed ones; that no checkpoint signs more blocks than are stored; SQLite's quick_check; and
    that the log extends the last checkpoint this verifier accepted. On success the latest
    checkpoint becomes the new last-seen one (with `update`).
    """
    problems = _Problems()
    notes: list[str] = []
    pinned, last_text = _read_verifier_state(verifier_dir, ledger.verifier, problems)
    origin = ledger.origin
    timeout = ledger.busy_timeout
    with ThreadPoolExecutor(max_workers=2) as pool, ledger.transaction("verify", write=False) as db:
        # Fix this connection's snapshot first: the helpers' later snapshots can only hold more.
        (blocks,) = db.execute("SELECT COALESCE(MAX(idx) + 1, 0) FROM blocks").fetchone()
        links_job = pool.submit(_link_check, ledger.db_path, timeout, blocks > CHILD_THRESHOLD)
        integrity_job = pool.submit(_quick_check, ledger.db_path, timeout)
        history = _key_history(db, pinned or ledger.verifier, problems)
        _check_keys(history, ledger.verifier, pinned, verifier_dir / TRUSTED_KEY, ledger.public_key_path, problems,
                    notes)
        trusted = history.current
        last_seen = _open_last_seen(last_text, history, pinned, verifier_dir, problems)
        if last_seen is not None and last_seen.origin != origin:
            problems.add(None, f"the verifier last saw log {last_seen.origin!r}, this is {origin!r}")
            last_seen = None
        checkpoints: dict[Any, Any] = dict(db.execute("SELECT size, note FROM checkpoints"))
        scan = _TreeScan(origin, history, checkpoints, problems, all_signatures, last_seen.size if last_seen else -1)
        cursor = db.execute("SELECT leaf FROM blocks ORDER BY idx")
        while rows := cursor.fetchmany(8192):
            scan.add(rows)
        size, root = scan.size, scan.root
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
            if latest is not None and not _signature_ok(latest, history.key_for(size)):
                bad = _first_bad_signature(db, size, history)
                problems.add(bad - 1, f"checkpoint {bad}: the signature does not verify with the trusted key")

        problems.merge(links_job.result())
        integrity = integrity_job.result()
        if integrity != ["ok"]:
            problems.add(None, "SQLite integrity check: " + "; ".join(map(str, integrity)))
        _check_tree_cache(db, scan.levels, problems)

    if last_seen is not None:
        if last_seen.size > size:
            problems.add(
                size,
                f"the log has {size} blocks but this verifier saw {last_seen.size} before: "
                f"blocks {size} to {last_seen.size - 1} were removed",
            )
        elif scan.last_root != last_seen.root:
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


def _first_bad_signature(db: Any, size: int, history: KeyHistory) -> int:
    """The smallest tree size whose checkpoint signature fails, by bisection (signatures are only ever added)."""
    lo, hi = 1, size  # the checkpoint at `hi` is known bad
    while lo < hi:
        mid = (lo + hi) // 2
        row = db.execute("SELECT note FROM checkpoints WHERE size = ?", (mid,)).fetchone()
        if row is not None and _signature_ok(row[0], history.key_for(mid)):
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
    sink: Any = _Echo(problems) if problems.first_bad is not None else problems
    size = len(levels[0])
    (top,) = db.execute("SELECT MAX(level) FROM tree").fetchone()
    depth = max(len(levels), top + 1 if isinstance(top, int) else 0)
    for level in range(depth):
        nodes = levels[level] if level < len(levels) else []
        rows = db.execute("SELECT idx, hash FROM tree WHERE level = ? ORDER BY idx", (level,)).fetchall()
        # (level, idx) is the key, so n rows ending at idx n - 1 are exactly 0 .. n - 1.
        if len(rows) == len(nodes) and (not rows or rows[-1][0] == len(rows) - 1) and [h for _, h in rows] == nodes:
            continue
        reported = 0
        stored = {idx: h for idx, h in rows if isinstance(idx, int)}
        for idx in sorted(stored):
            if reported >= 3:
                break
            if idx < 0 or idx >= len(nodes):
                message = f"the Merkle node table holds node (level {level}, index {idx}) beyond the log"
                sink.add(max(idx << level, size), message)
                reported += 1
            elif stored[idx] != nodes[idx]:
                sink.add(idx << level, f"the Merkle node (level {level}, index {idx}) does not match the blocks it covers")
                reported += 1
        for idx in range(len(nodes)):
            if reported >= 3:
                break
            if idx not in stored:
                sink.add(idx << level, f"the Merkle node table lacks node (level {level}, index {idx})")
                reported += 1


def _open_last_seen(
    text: str | None, history: KeyHistory, pinned: note.Verifier | None, verifier_dir: Path, problems: _Problems
) -> note.Checkpoint | None:
    """The last checkpoint this verifier accepted, checked with the key it pinned then."""
    if text is None or pinned is None:
        return None
    try:
        return note.parse_checkpoint(note.open_note(text, [pinned]).text)
    except note.NoteError as exc:
        problems.add(None, f"the last checkpoint this verifier saw ({verifier_dir / LAST_CHECKPOINT}) does not verify "
                           f"with the trusted key: {exc}")
        return None


def _save_verifier_state(
    verifier_dir: Path, trusted: note.Verifier, pinned: note.Verifier | None, latest: str | None, notes: list[str]
) -> None:
    files.trusted_dir(verifier_dir, "verifier directory", error=keys.KeyFileError)
    if pinned is None:
        keys.write_private_file(verifier_dir / TRUSTED_KEY, trusted.vkey + "\n")
        notes.append(f"trusted key pinned on first use: {trusted.name} ({trusted.key_id.hex()})")
    elif pinned.vkey != trusted.vkey:
        # Only reached when the log verified: every rotation from the pinned key on is signed by both keys.
        keys.write_private_file(verifier_dir / TRUSTED_KEY, trusted.vkey + "\n")
    if latest is not None:
        keys.write_private_file(verifier_dir / LAST_CHECKPOINT, latest)


def read_last_seen(verifier_dir: Path) -> str | None:
    """The checkpoint note this verifier accepted last, if any."""
    try:
        return files.read_checked(verifier_dir / LAST_CHECKPOINT, "last checkpoint", limit=keys.MAX_KEY_FILE,
                                  error=keys.KeyFileError).decode()
    except FileNotFoundError:
        return None


__all__ = ["LAST_CHECKPOINT", "TRUSTED_KEY", "KeyHistory", "read_last_seen", "verify_full"]
