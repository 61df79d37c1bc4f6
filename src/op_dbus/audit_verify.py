"""Check an op-dbus audit log export with nothing but the file and the host's public key.

    python -m op_dbus.audit_verify audit.json --key host.pub
    python audit_verify.py audit.json --key host.pub --json     # this file alone works too

This module depends on the Python standard library and `cryptography` only, and imports nothing else
of op-dbus, so an auditor can copy this one file and run it anywhere. It checks:

  * the checkpoint: a C2SP signed note whose Ed25519 signature verifies under the given verifier key
    (`<name>+<hex key ID>+<base64 key>`, the content of the host's `host.pub`), naming that key's
    origin, the tree size and the tree head; signatures by other keys (witnesses) are ignored;
  * key rotations: when the host's key was replaced by `op-dbus key rotate`, the export lists each
    rotation with its checkpoint; a rotation is followed only when that checkpoint is signed by both
    the old and the new key and the latest tree extends it (consistency proof), so a host.pub taken
    before the rotation still checks the export;
  * every block: its leaf hash recomputed from the exported header bytes (RFC 6962:
    SHA-256(0x00 || header)), its index, its `prev` link to the block before it, the SHA-256 of its
    changes and state records where the export carries them, and its inclusion proof against the
    checkpoint's tree head;
  * the export's own `range`: the blocks must be exactly that range; an export whose range is the
    whole log (block 0 to the checkpoint's size) must hold every block, and its tree head is
    recomputed from all leaves; a range export is reported as one;
  * with `--since OLD` (a checkpoint or an earlier export seen before): that the log still extends it,
    i.e. the tree head over its first blocks is the one that was signed then (no history rewritten).
  * with `--policy POLICY` (C2SP tlog-policy: `log`, `witness NAME VKEY`, `group NAME K|all|any ...`,
    `quorum`): that the checkpoint is signed by a log of the policy and carries witness cosignatures
    (C2SP cosignature/v1, in the checkpoint or the export's `cosignatures`) that meet the quorum.

The export is read as a stream, block by block, so memory stays small whatever its size; numbers
longer than any field needs, nesting deeper than any export has, and values larger than
`MAX_VALUE_CHARS` are refused as unreadable.

Exit status: 0 every check passed; 3 a check failed (the first bad block is named); 2 the export or
the key cannot be read (not JSON, truncated, wrong format, hostile).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import codecs
import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXPORT_FORMAT = "op-dbus audit log export"
EXPORT_VERSION = 1
ZERO_HASH = "0" * 64
SIG_PREFIX = "\u2014 "
MAX_PROBLEMS = 50
MAX_DIGITS = 40  # no field of an export needs more (indexes and sizes are 64-bit)
MAX_VALUE_CHARS = 64 << 20  # one block (header + records) or one head member
READ_CHUNK = 1 << 20
KEY_ROTATION = "key-rotation"
EXIT_OK, EXIT_UNREADABLE, EXIT_FAILED = 0, 2, 3
# The members of an export other than its blocks; they must come before the blocks to be streamed.
HEAD_MEMBERS = frozenset({"format", "version", "about", "origin", "verifier_key", "exported_at", "tree_size", "root",
                          "checkpoint", "range", "key_rotations"})


class Unreadable(Exception):
    """The export or the key cannot be used at all (as opposed to: it can be read and fails a check)."""


@dataclass
class Report:
    ok: bool = True
    origin: str | None = None
    tree_size: int | None = None
    root: str | None = None
    first: int | None = None
    last: int | None = None
    complete: bool | None = None  # True: the export claims (and holds) the whole log; False: a range export
    blocks: int = 0
    with_changes: int = 0
    with_state: int = 0
    key_rotations: int = 0
    first_bad: int | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    suppressed: int = 0

    def fail(self, index: int | None, message: str) -> None:
        self.ok = False
        if index is not None and (self.first_bad is None or index < self.first_bad):
            self.first_bad = index
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)
        else:
            self.suppressed += 1

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if self.suppressed:
            d["problems"] = [*self.problems, f"... and {self.suppressed} more problems"]
        return d


def _show(value: Any, limit: int = 40) -> str:
    """A short, printable rendering of a value taken from the export (which may be anything)."""
    try:
        text = repr(value)
    except RecursionError:
        text = "<deeply nested value>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- JSON as an export may hold it ----------------------------------------------------------------


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_DIGITS:
        raise Unreadable(f"the export holds a number of {len(text)} digits; no field of an export has more than "
                         f"{MAX_DIGITS}")
    return int(text)


def _parse_constant(text: str) -> Any:
    raise Unreadable(f"the export holds {text}, which is not JSON")


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_parse_constant)


def loads(text: str) -> Any:
    """json.loads with the export's limits: bounded numbers, no NaN; deep nesting raises ValueError."""
    try:
        value, end = _DECODER.raw_decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except Unreadable as exc:
        raise ValueError(str(exc)) from None
    if text[end:].strip():
        raise ValueError(f"extra data at character {end}")
    return value


class JsonStream:
    """One JSON text read incrementally from a binary file: members and array elements one at a time."""

    _WS = " \t\r\n"

    def __init__(self, fh: IO[bytes], name: str) -> None:
        self._fh = fh
        self.name = name
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._pos = 0
        self._eof = False
        self._lines_before = 0  # newlines in the text already dropped from the buffer
        self._column_before = 0  # characters after the last dropped newline

    def _fill(self, want: int) -> None:
        """Read until `want` characters are buffered after the position, or the end of the file."""
        if self._pos > READ_CHUNK and self._pos > len(self._buf) // 2:
            dropped = self._buf[: self._pos]
            newlines = dropped.count("\n")
            if newlines:
                self._lines_before += newlines
                self._column_before = len(dropped) - dropped.rfind("\n") - 1
            else:
                self._column_before += len(dropped)
            self._buf = self._buf[self._pos:]
            self._pos = 0
        while not self._eof and len(self._buf) - self._pos < want:
            data = self._fh.read(READ_CHUNK)
            try:
                text = self._utf8.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise Unreadable(f"{self.name}: not UTF-8 text ({exc.reason})") from None
            if not data:
                self._eof = True
            self._buf += text

    def _where(self, pos: int) -> str:
        nl = self._buf.rfind("\n", 0, pos)
        line = self._lines_before + self._buf.count("\n", 0, pos) + 1
        column = pos - nl if nl >= 0 else self._column_before + pos + 1
        return f"line {line}, column {column}"

    def peek(self) -> str:
        """The next character that is not white space ("" at the end of the file)."""
        while True:
            buf, pos = self._buf, self._pos
            while pos < len(buf) and buf[pos] in self._WS:
                pos += 1
            self._pos = pos
            if pos < len(buf) or self._eof:
                return buf[pos] if pos < len(buf) else ""
            self._fill(1)

    def expect(self, chars: str, what: str) -> str:
        c = self.peek()
        if not c or c not in chars:
            found = "the end of the file (truncated?)" if not c else repr(c)
            raise Unreadable(f"{self.name}: not valid JSON at {self._where(self._pos)}: expected {what}, found {found}")
        self._pos += 1
        return c

    def value(self) -> Any:
        """The next JSON value whole. A value may be read again with a larger buffer until it is complete."""
        self.peek()
        want = READ_CHUNK
        while True:
            self._fill(want)
            try:
                value, end = _DECODER.raw_decode(self._buf, self._pos)
            except RecursionError:
                raise Unreadable(f"{self.name}: JSON nested too deeply at {self._where(self._pos)}") from None
            except json.JSONDecodeError as exc:
                if not self._eof and len(self._buf) - self._pos < MAX_VALUE_CHARS:
                    want = min(2 * (len(self._buf) - self._pos) + READ_CHUNK, MAX_VALUE_CHARS)
                    continue
                if not self._eof:
                    raise Unreadable(f"{self.name}: a value at {self._where(self._pos)} is larger than "
                                     f"{MAX_VALUE_CHARS >> 20} MiB or not valid JSON") from None
                hint = " (the file ends early: truncated?)" if exc.pos >= len(self._buf.rstrip()) else ""
                raise Unreadable(f"{self.name}: not valid JSON at {self._where(exc.pos)}: {exc.msg}{hint}") from None
            # A number that ends the buffer may go on in the next read.
            if end < len(self._buf) or self._eof:
                self._pos = end
                return value
            want = len(self._buf) - self._pos + READ_CHUNK

    def end(self) -> None:
        if self.peek():
            raise Unreadable(f"{self.name}: extra data after the export at {self._where(self._pos)}")


# -- RFC 6962 / RFC 9162 -------------------------------------------------------------------------


def _leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_proof(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """RFC 9162 section 2.1.3.2: the tree head that `proof` implies for leaf hash `leaf` at `index`."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = _node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("the inclusion proof is too short")
    return r


def consistency_holds(size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]) -> bool:
    """RFC 9162 section 2.1.4.2: whether the tree (size2, root2) extends (size1, root1), as `proof` shows."""
    if not 0 < size1 <= size2:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if not proof:
        return False
    if size1 & (size1 - 1) == 0:
        proof = [root1, *proof]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = _node_hash(c, fr), _node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = _node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == root1 and sr == root2


class TreeBuilder:
    """The RFC 6962 tree head over a stream of leaf hashes in O(log n) memory, with the heads at chosen sizes."""

    def __init__(self, wanted: set[int] | None = None) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []
        self._wanted = wanted or set()
        self.heads: dict[int, bytes] = {}

    def add(self, leaf: bytes) -> None:
        level, h = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            h = _node_hash(self._stack.pop()[1], h)
            level += 1
        self._stack.append((level, h))
        self.size += 1
        if self.size in self._wanted:
            self.heads[self.size] = self.head()

    def head(self) -> bytes:
        if not self._stack:
            return hashlib.sha256(b"").digest()
        # Fold the perfect subtrees of the right edge, right to left.
        acc = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            acc = _node_hash(h, acc)
        return acc


def tree_head(leaves: list[bytes]) -> bytes:
    """The RFC 6962 tree head over all `leaves` (leaf hashes)."""
    builder = TreeBuilder()
    for h in leaves:
        builder.add(h)
    return builder.head()


# -- C2SP signed notes and checkpoints --------------------------------------------------------------


@dataclass(frozen=True)
class VerifierKey:
    name: str
    key_id: bytes
    public: Ed25519PublicKey
    raw: bytes = b""

    def same(self, other: VerifierKey) -> bool:
        return self.name == other.name and self.key_id == other.key_id and self.raw == other.raw


def parse_verifier_key(text: object) -> VerifierKey:
    if not isinstance(text, str):
        raise Unreadable("the key is not a C2SP verifier key (<name>+<hex key ID>+<base64 key>)")
    line = text.strip()
    parts = line.split("+", 2)
    if len(parts) != 3 or not parts[0] or any(c.isspace() for c in parts[0]):
        raise Unreadable("the key is not a C2SP verifier key (<name>+<hex key ID>+<base64 key>)")
    name, hex_id, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
        claimed = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise Unreadable("the key's key ID or key is not valid hex/base64") from None
    if len(raw) != 33 or raw[0] != 0x01:
        raise Unreadable("the key is not an Ed25519 verifier key (type byte 0x01 and 32 key bytes)")
    try:
        key_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    except UnicodeEncodeError:
        raise Unreadable("the key's name is not valid text") from None
    if claimed != key_id:
        raise Unreadable(f"the key ID in the key ({hex_id}) does not match the key itself ({key_id.hex()})")
    return VerifierKey(name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:]), raw)


def _split_note(signed: str) -> tuple[str, list[tuple[str, bytes]]]:
    """A signed note's text and its (key name, base64-decoded signature) lines. Raises ValueError."""
    split = signed.rfind("\n\n")
    if split < 0 or not signed.endswith("\n"):
        raise ValueError("the checkpoint is not a signed note (no blank line before the signatures)")
    text, block = signed[: split + 1], signed[split + 2 :]
    lines = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise ValueError(f"a signature line of the checkpoint is malformed: {line[:60]!r}")
        name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"the checkpoint's signature by {name!r} is not valid base64") from None
        lines.append((name, raw))
    return text, lines


def _signed_by(text: str, lines: list[tuple[str, bytes]], key: VerifierKey) -> bool:
    """Whether a signature line names `key` and verifies; a line that names it and does not verify is an error."""
    verified = False
    for name, raw in lines:
        if name != key.name or raw[:4] != key.key_id:
            continue  # a signature by another key (a witness, say): not ours to judge
        try:
            key.public.verify(raw[4:], text.encode("utf-8", "surrogatepass"))
        except InvalidSignature:
            raise ValueError(f"the checkpoint's signature by {name} (key {key.key_id.hex()}) does not verify "
                             "with the given key") from None
        verified = True
    return verified


def _checkpoint_body(text: str) -> tuple[str, int, bytes]:
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not lines[1].isdigit() or not lines[1].isascii() or len(lines[1]) > MAX_DIGITS:
        raise ValueError("the checkpoint text is not <origin>, <size>, <base64 root>")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the checkpoint's tree head is not valid base64") from None
    if len(root) != 32:
        raise ValueError("the checkpoint's tree head is not 32 bytes")
    return lines[0], int(lines[1]), root


def open_checkpoint(signed: object, key: VerifierKey, *also: VerifierKey) -> tuple[str, int, bytes]:
    """Check the note's signature by `key` (and by each of `also`) and return the checkpoint's (origin, size, root).

    Raises ValueError naming what does not verify."""
    if not isinstance(signed, str):
        raise ValueError("the checkpoint is not a text")
    text, lines = _split_note(signed)
    for k in (key, *also):
        if not _signed_by(text, lines, k):
            raise ValueError(f"the checkpoint carries no signature by the given key {k.name} ({k.key_id.hex()})")
    return _checkpoint_body(text)


# -- the export ---------------------------------------------------------------------------------------


def _hex32(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("not a 64-digit hex hash")
    return bytes.fromhex(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_record(report: Report, index: int, header: dict[str, Any], block: dict[str, Any], what: str) -> bool:
    text = block.get(what)
    if text is None:
        return False
    if not isinstance(text, str):
        report.fail(index, f"block {index}: its {what} record is not a JSON text string")
        return False
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    if digest != header.get(f"{what}_hash"):
        report.fail(index, f"block {index}: its {what} record does not match the {what}_hash in its header "
                           f"(got {digest[:16]}, header says {_show(header.get(f'{what}_hash'), 20)}): "
                           "the record was edited")
        return False
    if what == "changes":
        try:
            changes = loads(text)
        except ValueError:
            report.fail(index, f"block {index}: its changes record is not JSON")
            return False
        if not isinstance(changes, list) or len(changes) != header.get("change_count"):
            report.fail(index, f"block {index}: its changes record does not hold change_count entries")
    return True


@dataclass
class _Rotation:
    index: int
    old: VerifierKey
    new: VerifierKey


class ExportCheck:
    """The checks of one export, fed its head members first and then its blocks one by one."""

    def __init__(self, head: dict[str, Any], key_text: str, since: str | None = None) -> None:
        self.key = parse_verifier_key(key_text)
        if head.get("format") != EXPORT_FORMAT:
            raise Unreadable(f"the file is not an op-dbus audit log export (its \"format\" is not {EXPORT_FORMAT!r})")
        if head.get("version") != EXPORT_VERSION:
            raise Unreadable(f"export version {_show(head.get('version'))}; this verifier reads version "
                             f"{EXPORT_VERSION}")
        self.report = Report()
        self.since = since
        self.dead = False  # nothing signed to check the blocks against: only count them
        self.size = 0
        self.root = b""
        self.rotations: list[_Rotation] = []
        self.keys = [self.key]  # the given key and each key it was rotated to, in order
        self._open_head(head)
        self.claimed = self._claimed_range(head.get("range"))
        wanted: set[int] = set()
        self.since_cp = self._open_since() if since is not None and not self.dead else None
        if self.since_cp is not None:
            wanted.add(self.since_cp[1])
        self.tree = TreeBuilder(wanted)
        self.prev_hash: str | None = None
        self.prev_index: int | None = None
        self.contiguous_from_zero = True
        self._rotation_at = {r.index: r for r in self.rotations}

    # the head ---------------------------------------------------------------------------------------

    def _open_head(self, head: dict[str, Any]) -> None:
        report = self.report
        signed = head.get("checkpoint")
        if not isinstance(signed, str):
            report.fail(None, "the export has no checkpoint: nothing signed to check the blocks against")
            self.dead = True
            return
        key = self._follow_rotations(head.get("key_rotations"))
        try:
            origin, size, root = open_checkpoint(signed, key)
        except ValueError as exc:
            report.fail(None, f"checkpoint: {exc}")
            self.dead = True
            return
        self.size, self.root = size, root
        report.origin, report.tree_size, report.root = origin, size, root.hex()
        if origin != self.key.name:
            report.fail(None, f"checkpoint: it is for log {origin!r}, but the key is {self.key.name!r}")
        if head.get("tree_size") not in (None, size):
            report.fail(None, f"the export says tree_size {_show(head.get('tree_size'))}, its signed checkpoint "
                              f"says {size}")
        if head.get("root") not in (None, root.hex()):
            report.fail(None, "the export's \"root\" is not the tree head its signed checkpoint commits to")
        for rot, proof, (_, r_size, r_root) in self._pending:
            if not consistency_holds(r_size, size, r_root, root, proof):
                report.fail(rot.index, f"key rotation at block {rot.index}: the signed log does not extend the "
                                       "checkpoint that both keys signed (consistency proof fails)")

    def _follow_rotations(self, rotations: Any) -> VerifierKey:
        """The key that signs the latest checkpoint: the given one, followed through each doubly signed rotation."""
        self._pending: list[tuple[_Rotation, list[bytes], tuple[str, int, bytes]]] = []
        current = self.key
        if rotations is None:
            return current
        report = self.report
        if not isinstance(rotations, list):
            report.fail(None, "the export's \"key_rotations\" is not a list")
            return current
        for n, entry in enumerate(rotations):
            where = f"key_rotations[{n}]"
            if not isinstance(entry, dict) or not _int(entry.get("index")) or entry["index"] < 0:
                report.fail(None, f"{where}: not a key rotation with an index")
                continue
            index = entry["index"]
            try:
                old = parse_verifier_key(entry.get("old_key"))
                new = parse_verifier_key(entry.get("new_key"))
            except Unreadable as exc:
                report.fail(index, f"key rotation at block {index}: {exc}")
                continue
            if not old.same(current):
                continue  # a rotation before the given key's time (or of another chain): nothing to follow
            if new.name != current.name:
                report.fail(index, f"key rotation at block {index}: the new key is named {new.name!r}, not "
                                   f"{current.name!r}")
                continue
            try:
                opened = open_checkpoint(entry.get("checkpoint"), old, new)
                proof = [_hex32(h) for h in entry.get("consistency_proof", [])]
            except (ValueError, TypeError) as exc:
                report.fail(index, f"key rotation at block {index} is not followed: {exc} (a rotation must be "
                                   "signed by both the old and the new key)")
                continue
            if opened[1] != index + 1 or opened[0] != current.name:
                report.fail(index, f"key rotation at block {index}: its checkpoint is for tree size {opened[1]} of "
                                   f"log {opened[0]!r}, not size {index + 1}")
                continue
            rot = _Rotation(index, old, new)
            self.rotations.append(rot)
            self._pending.append((rot, proof, opened))
            self.keys.append(new)
            self.report.key_rotations += 1
            report.notes.append(f"the host key was rotated at block {index}: {old.key_id.hex()} -> {new.key_id.hex()}, "
                                "a checkpoint signed by both")
            current = new
        return current

    def _claimed_range(self, value: Any) -> tuple[int, int] | None:
        if value is None:
            return None
        if (not isinstance(value, dict) or not _int(value.get("first")) or not _int(value.get("last"))
                or not 0 <= value["first"] <= value["last"]):
            self.report.fail(None, f"the export's \"range\" is not {{\"first\": A, \"last\": B}} with 0 <= A <= B: "
                                   f"{_show(value)}")
            return None
        return value["first"], value["last"]

    def _open_since(self) -> tuple[str, int, bytes] | None:
        since, report = self.since, self.report
        assert since is not None
        problem = "no key"
        for key in reversed(self.keys):
            try:
                return open_checkpoint(since, key)
            except ValueError as exc:
                problem = str(exc)
        report.fail(None, f"--since: the earlier checkpoint does not verify: {problem}")
        return None

    # the blocks ----------------------------------------------------------------------------------------

    def block(self, position: int, block: Any) -> None:
        report = self.report
        where = f"blocks[{position}]"
        prev_index = self.prev_index
        if not isinstance(block, dict) or not _int(block.get("index")):
            report.fail(prev_index + 1 if prev_index is not None else None, f"{where}: not a block with an integer index")
            self.prev_hash = None
            self.contiguous_from_zero = False
            return
        index = block["index"]
        expected = prev_index + 1 if prev_index is not None else (self.claimed[0] if self.claimed else index)
        if index != expected:
            if prev_index is not None:
                report.fail(min(index, expected), f"{where}: block {index} follows block {prev_index}: blocks are "
                                                  "missing or out of order")
            else:
                report.fail(min(index, expected), f"{where}: the export's range starts at block {expected}, its "
                                                  f"first block is {index}")
            self.prev_hash = None
            self.contiguous_from_zero = False
        self.prev_index = index
        report.first = index if report.first is None else report.first
        report.last = index
        report.blocks += 1
        leaf_text = block.get("header")
        if not isinstance(leaf_text, str):
            report.fail(index, f"block {index}: it has no header text")
            self.prev_hash = None
            self.contiguous_from_zero = False
            return
        leaf = leaf_text.encode("utf-8", "surrogatepass")
        lh = _leaf_hash(leaf)
        if self.contiguous_from_zero and report.first == 0:
            self.tree.add(lh)
        if "leaf_hash" in block and block["leaf_hash"] != lh.hex():
            report.fail(index, f"block {index}: its header bytes hash to leaf {lh.hex()[:16]}, not the exported "
                               f"leaf_hash {_show(block['leaf_hash'], 20)}: the header was edited")
        try:
            header = loads(leaf_text)
            if not isinstance(header, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            report.fail(index, f"block {index}: its header is not a JSON object ({exc})")
            self.prev_hash = None
            return
        if header.get("index") != index:
            report.fail(index, f"block {index}: its header says index {_show(header.get('index'))}")
        if index == 0 and header.get("prev") != ZERO_HASH:
            report.fail(index, "block 0: its prev is not 64 zeros")
        elif self.prev_hash is not None and header.get("prev") != self.prev_hash:
            report.fail(index, f"block {index}: prev {_show(header.get('prev'), 20)} does not name block {index - 1} "
                               f"(whose header hashes to {self.prev_hash[:16]})")
        self.prev_hash = hashlib.sha256(leaf).hexdigest()
        if _check_record(report, index, header, block, "changes"):
            report.with_changes += 1
        if _check_record(report, index, header, block, "state"):
            report.with_state += 1
        self._check_rotation_block(index, header)
        if self.dead:
            return
        if not index < self.size:
            report.fail(index, f"block {index}: it is beyond the signed checkpoint (tree size {self.size})")
            return
        try:
            proof = [_hex32(h) for h in block.get("inclusion_proof", [])]
            implied = root_from_proof(index, self.size, lh, proof)
        except (ValueError, TypeError) as exc:
            report.fail(index, f"block {index}: its inclusion proof is malformed ({exc})")
            return
        if implied != self.root:
            report.fail(index, f"block {index}: its inclusion proof does not lead to the signed tree head of size "
                               f"{self.size}: the block or its proof was edited")

    def _check_rotation_block(self, index: int, header: dict[str, Any]) -> None:
        rot = self._rotation_at.get(index)
        if header.get("kind") != KEY_ROTATION:
            if rot is not None:
                self.report.fail(index, f"block {index}: the export lists a key rotation here, but the block is of "
                                        f"kind {_show(header.get('kind'))}")
            return
        meta = header.get("meta")
        named = meta.get("rotation") if isinstance(meta, dict) else None
        if rot is not None and (not isinstance(named, dict) or named.get("old_key") != _vkey(rot.old)
                                or named.get("new_key") != _vkey(rot.new)):
            self.report.fail(index, f"block {index}: the key rotation it records is not the one the export lists")

    # the end -------------------------------------------------------------------------------------------

    def finish(self, held_blocks: bool = True) -> Report:
        report, size, claimed = self.report, self.size, self.claimed
        if not held_blocks:
            report.notes.append("the export holds no blocks")
        if self.dead:
            return report
        whole = claimed is None or claimed == (0, size - 1)
        if claimed is not None and claimed[1] >= size:
            report.fail(size, f"the export's range {claimed[0]}..{claimed[1]} goes beyond the signed checkpoint "
                              f"(tree size {size})")
        elif claimed is not None and report.last is not None and report.last < claimed[1]:
            what = "the whole log signed at tree size " + str(size) if whole else "its range"
            report.fail(report.last + 1, f"the export claims blocks {claimed[0]}..{claimed[1]} ({what}) but ends at "
                                         f"block {report.last}: blocks {report.last + 1} to {claimed[1]} are missing "
                                         "(the export was cut short)")
        elif claimed is not None and report.last is not None and report.last > claimed[1]:
            report.fail(claimed[1] + 1, f"the export claims blocks {claimed[0]}..{claimed[1]} but holds blocks up to "
                                        f"{report.last}")
        elif claimed is not None and report.first is None:
            report.fail(claimed[0], f"the export claims blocks {claimed[0]}..{claimed[1]} but holds none")
        elif claimed is None and report.first is None and size:
            report.fail(0, f"the export names no range and holds no blocks of the {size} its checkpoint signs")
        elif claimed is None and report.first is not None and (report.first != 0 or report.last != size - 1):
            report.fail((report.last or 0) + 1 if report.first == 0 else 0,
                        f"the export names no range, so it must hold the whole log (blocks 0..{size - 1}), but it "
                        f"holds blocks {report.first}..{report.last}")
        report.complete = whole and report.ok
        if not whole:
            report.notes.append(f"a range export: blocks {claimed[0]}..{claimed[1]} of the {size} blocks the "  # type: ignore[index]
                                "checkpoint signs")
        if report.first is not None and report.first > 0:
            report.notes.append(f"the export starts at block {report.first}: its link to block {report.first - 1} is "
                                "covered by its inclusion proof only")
        if report.last is not None and report.last < size - 1 and not whole:
            report.notes.append(f"the export ends at block {report.last}; the signed log holds {size} blocks")
        if (self.contiguous_from_zero and report.first == 0 and self.tree.size == size and size
                and self.tree.head() != self.root):
            report.fail(None, f"the tree head recomputed from all {size} blocks is not the signed one")
        if self.since_cp is not None:
            self._check_since(*self.since_cp)
        return report

    def _check_since(self, old_origin: str, old_size: int, old_root: bytes) -> None:
        """The log must extend a checkpoint seen earlier: same tree head over the blocks that checkpoint covered."""
        report, size, root = self.report, self.size, self.root
        if old_origin != report.origin:
            report.fail(None, f"--since: the earlier checkpoint is for log {old_origin!r}, this export for "
                              f"{report.origin!r}")
        elif old_size > size:
            report.fail(None, f"--since: the log shrank: it had {old_size} blocks, the export's checkpoint says {size}")
        elif old_size == size and old_root != root:
            report.fail(None, f"--since: two different signed tree heads for the same size {size}: the history was "
                              "rewritten")
        elif old_size == size:
            report.notes.append(f"the log is still the one signed at size {old_size}")
        elif old_size not in self.tree.heads:
            report.fail(None, "--since: checking against the earlier checkpoint needs the export to hold blocks "
                              f"0..{old_size - 1}")
        elif self.tree.heads[old_size] != old_root:
            report.fail(None, f"--since: the first {old_size} blocks are not the ones signed earlier: the history "
                              "was rewritten")
        else:
            report.notes.append(f"the log extends the earlier checkpoint of size {old_size}")


def _vkey(key: VerifierKey) -> str:
    return f"{key.name}+{key.key_id.hex()}+{base64.b64encode(key.raw).decode()}"


def verify_export(doc: Any, key_text: str, since: str | None = None) -> Report:
    """Check an export document (already parsed JSON) against the verifier key text (and an earlier checkpoint)."""
    if not isinstance(doc, dict):
        parse_verifier_key(key_text)
        raise Unreadable(f"the file is not an op-dbus audit log export (its \"format\" is not {EXPORT_FORMAT!r})")
    check = ExportCheck({k: v for k, v in doc.items() if k != "blocks"}, key_text, since)
    blocks = doc.get("blocks")
    if not isinstance(blocks, list):
        raise Unreadable("the export has no \"blocks\" list")
    for position, block in enumerate(blocks):
        check.block(position, block)
    return check.finish(bool(blocks))


def verify_stream(stream: JsonStream, key_text: str, since: str | None = None, policy: Policy | None = None) -> Report:
    """Check an export read from `stream` block by block: memory holds one block at a time, not the file.

    With a `policy`, the checkpoint must also carry the witness cosignatures its quorum asks for (the export's
    `cosignatures` member follows its blocks)."""
    stream.expect("{", "an export (a JSON object)")
    head: dict[str, Any] = {}
    check: ExportCheck | None = None
    held: list[Any] | None = None
    seen = set()
    count = 0
    if stream.peek() != "}":
        while True:
            key = stream.value()
            if not isinstance(key, str):
                raise Unreadable(f"{stream.name}: not valid JSON: an object key is not a string")
            if key in seen:
                raise Unreadable(f"{stream.name}: the export names {key!r} twice")
            seen.add(key)
            stream.expect(":", "':' after a key")
            if key == "blocks":
                if "checkpoint" in head:
                    check = ExportCheck(head, key_text, since)
                    count = _stream_blocks(stream, check.block)
                else:
                    # Blocks before the checkpoint: keep them until the head is known (not the layout exports have).
                    held = _held_blocks(stream)
            elif check is not None and key in HEAD_MEMBERS:
                raise Unreadable(f"{stream.name}: the export's {key!r} comes after its blocks; it must come before")
            else:
                head[key] = stream.value()
            if stream.expect(",}", "',' or '}'") == "}":
                break
    stream.end()
    if check is not None:
        report = check.finish(count > 0)
        if policy is not None:
            check_policy(report, head, policy)
        return report
    if "format" not in head and "blocks" not in seen:
        parse_verifier_key(key_text)
        raise Unreadable(f"the file is not an op-dbus audit log export (its \"format\" is not {EXPORT_FORMAT!r})")
    if held is None:
        ExportCheck(head, key_text, since)  # the head's own problems first (format, version)
        raise Unreadable("the export has no \"blocks\" list")
    report = verify_export({**head, "blocks": held}, key_text, since)
    if policy is not None:
        check_policy(report, head, policy)
    return report


def _held_blocks(stream: JsonStream) -> list[Any]:
    held: list[Any] = []
    _stream_blocks(stream, lambda _n, b: held.append(b))
    return held


def _stream_blocks(stream: JsonStream, take: Any) -> int:
    if stream.peek() != "[":
        raise Unreadable("the export has no \"blocks\" list")
    stream.expect("[", "'['")
    n = 0
    if stream.peek() == "]":
        stream.expect("]", "']'")
        return 0
    while True:
        take(n, stream.value())
        n += 1
        if stream.expect(",]", "',' or ']' in the blocks list") == "]":
            return n


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise Unreadable(f"{path}: cannot read it ({exc.strerror})") from None



# -- C2SP tlog-policy: witness cosignatures and the quorum ------------------------------------------------

COSIGNATURE_ALG = 0x04
POLICY_LIMIT = 256  # logs, witnesses and groups each; the spec asks for at least 32


@dataclass(frozen=True)
class WitnessKey:
    name: str  # the key name in the vkey (what the cosignature line says)
    key_id: bytes
    public: Ed25519PublicKey
    raw: bytes


@dataclass
class Policy:
    logs: list[VerifierKey] = field(default_factory=list)
    witnesses: dict[str, WitnessKey] = field(default_factory=dict)
    groups: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    quorum: str | None = None


def _parse_vkey(text: str, alg: int, what: str) -> tuple[str, bytes, bytes]:
    parts = text.split("+", 2)
    if len(parts) != 3 or not parts[0]:
        raise ValueError(f"{what} is not a vkey (<name>+<hex key ID>+<base64 key>)")
    name, hex_id, b64 = parts
    try:
        raw = base64.b64decode(b64, validate=True)
        claimed = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what}: key ID or key is not valid hex/base64") from None
    if len(raw) != 33 or raw[0] != alg:
        raise ValueError(f"{what}: not an Ed25519 key of signature type 0x{alg:02x}")
    if hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4] != claimed:
        raise ValueError(f"{what}: the key ID does not match the key")
    return name, claimed, raw[1:]


def parse_policy(text: str) -> Policy:
    """A C2SP tlog-policy file: `log VKEY [URL]`, `witness NAME VKEY [URL]`, `group NAME all|any|K NAME...`,
    exactly one `quorum NAME|none`; '#' comments and blank lines are ignored. Raises Unreadable naming the line."""
    policy = Policy()
    seen_keys: set[bytes] = set()
    for n, raw_line in enumerate(text.split("\n"), 1):
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in raw_line):
            raise Unreadable(f"policy line {n}: control characters are not allowed")
        fields = raw_line.replace("\t", " ").split()
        if not fields or fields[0].startswith("#"):
            continue
        kind, args = fields[0], fields[1:]
        try:
            if kind == "log" and len(args) in (1, 2):
                name, key_id, pub = _parse_vkey(args[0], 0x01, "log key")
                if pub in seen_keys:
                    raise ValueError("duplicate key")
                seen_keys.add(pub)
                policy.logs.append(VerifierKey(name, key_id, Ed25519PublicKey.from_public_bytes(pub)))
            elif kind == "witness" and len(args) in (2, 3):
                label = args[0]
                if label == "none" or label in policy.witnesses or label in policy.groups:
                    raise ValueError(f"the name {label!r} is reserved or already defined")
                name, key_id, pub = _parse_vkey(args[1], COSIGNATURE_ALG, f"witness {label}")
                if pub in seen_keys:
                    raise ValueError("duplicate key")
                seen_keys.add(pub)
                policy.witnesses[label] = WitnessKey(name, key_id, Ed25519PublicKey.from_public_bytes(pub), pub)
            elif kind == "group" and len(args) >= 3:
                label, threshold, members = args[0], args[1], args[2:]
                if label == "none" or label in policy.witnesses or label in policy.groups:
                    raise ValueError(f"the name {label!r} is reserved or already defined")
                if len(set(members)) != len(members):
                    raise ValueError("a member is listed twice")
                for m in members:
                    if m not in policy.witnesses and m not in policy.groups:
                        raise ValueError(f"member {m!r} is not a witness or group defined above")
                if threshold == "all":
                    k = len(members)
                elif threshold == "any":
                    k = 1
                elif threshold.isdigit() and threshold == str(int(threshold)) and 1 <= int(threshold) <= len(members):
                    k = int(threshold)
                else:
                    raise ValueError(f"threshold {threshold!r} must be all, any or 1..{len(members)}")
                policy.groups[label] = (k, members)
            elif kind == "quorum" and len(args) == 1:
                if policy.quorum is not None:
                    raise ValueError("a second quorum line")
                if args[0] != "none" and args[0] not in policy.witnesses and args[0] not in policy.groups:
                    raise ValueError(f"{args[0]!r} is not a witness or group defined above")
                policy.quorum = args[0]
            else:
                raise ValueError(f"unknown or malformed line {kind!r}")
        except ValueError as exc:
            raise Unreadable(f"policy line {n}: {exc}") from None
        if max(len(policy.logs), len(policy.witnesses), len(policy.groups)) > POLICY_LIMIT:
            raise Unreadable(f"policy line {n}: more than {POLICY_LIMIT} logs, witnesses or groups")
    if policy.quorum is None:
        raise Unreadable("the policy has no quorum line")
    return policy


def cosigned_by(key: WitnessKey, text: str, lines: list[str]) -> int | None:
    """The timestamp of a valid cosignature/v1 by `key` on checkpoint text `text` among `lines`, else None."""
    for line in lines:
        if not line.startswith(SIG_PREFIX):
            continue
        name, _, b64 = line.rstrip("\n")[len(SIG_PREFIX):].partition(" ")
        if name != key.name:
            continue
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) != 4 + 8 + 64 or raw[:4] != key.key_id:
            continue
        timestamp = int.from_bytes(raw[4:12], "big")
        if timestamp >= 1 << 63:
            continue
        try:
            key.public.verify(raw[12:], f"cosignature/v1\ntime {timestamp}\n{text}".encode())
        except InvalidSignature:
            continue
        return timestamp
    return None


def _witnessed(policy: Policy, name: str, cosigned: set[str]) -> bool:
    if name in policy.witnesses:
        return name in cosigned
    k, members = policy.groups[name]
    return sum(_witnessed(policy, m, cosigned) for m in members) >= k


def check_policy(report: Report, doc: Any, policy: Policy) -> None:
    """The checkpoint must be signed by a log of the policy and cosigned by witnesses meeting its quorum."""
    signed = doc.get("checkpoint") if isinstance(doc, dict) else None
    if not isinstance(signed, str) or "\n\n" not in signed:
        report.fail(None, "policy: the export has no checkpoint")
        return
    if policy.logs:
        for log in policy.logs:
            try:
                open_checkpoint(signed, log)
                break
            except ValueError:
                continue
        else:
            report.fail(None, "policy: the checkpoint is not signed by any log of the policy")
    split = signed.rfind("\n\n")
    text = signed[: split + 1]
    extra = doc.get("cosignatures", [])
    if not isinstance(extra, list) or not all(isinstance(x, str) for x in extra):
        report.fail(None, "policy: the export's cosignatures are not a list of signature lines")
        extra = []
    lines = [*signed[split + 2:].split("\n"), *extra]
    cosigned = {label for label, key in policy.witnesses.items() if cosigned_by(key, text, lines) is not None}
    report.notes.append(f"policy: cosigned by {', '.join(sorted(cosigned)) or 'no witness of the policy'}")
    if policy.quorum != "none" and not _witnessed(policy, str(policy.quorum), cosigned):
        report.fail(None, f"policy: the checkpoint (tree size {report.tree_size}) is not cosigned by the quorum "
                          f"{policy.quorum!r} (valid cosignatures from: {', '.join(sorted(cosigned)) or 'none'}); "
                          "on the host, `op-dbus report` and a new export may fix a gap, never a rewritten log")


def _load(path: str) -> Any:
    """A whole JSON file with the export's limits (for --since, whose files are small)."""
    with _open(path) as fh:
        stream = JsonStream(fh, path)
        value = stream.value()
        stream.end()
        return value


def check_file(path: str, key_text: str, since: str | None = None, policy: Policy | None = None) -> Report:
    """Check the export at `path` ("-" for standard input), streaming it."""
    if path == "-":
        return verify_stream(JsonStream(sys.stdin.buffer, "stdin"), key_text, since, policy)
    with _open(path) as fh:
        return verify_stream(JsonStream(fh, path), key_text, since, policy)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="audit_verify", description="Check an op-dbus audit log export against the host's public key.",
        epilog="Exit status: 0 verified; 3 a check failed; 2 the export or key cannot be read.")
    parser.add_argument("export", help="the export file (op-dbus export-blockchain > audit.json), or - for stdin")
    parser.add_argument("--key", required=True, metavar="HOST.pub",
                        help="the host's C2SP verifier key file (host.pub), obtained independently of the export")
    parser.add_argument("--since", metavar="OLD",
                        help="an earlier checkpoint note, or an earlier export, that this log must extend")
    parser.add_argument("--policy", metavar="POLICY",
                        help="a C2SP tlog-policy file: the checkpoint must carry witness cosignatures meeting its quorum")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    # Messages quote what the export holds, which may be any text: never fail to print them.
    for out in (sys.stdout, sys.stderr):
        if hasattr(out, "reconfigure"):
            out.reconfigure(errors="backslashreplace")
    try:
        try:
            with open(args.key, encoding="utf-8") as fh:
                key_text = fh.read(64 * 1024)
        except (OSError, UnicodeDecodeError) as exc:
            raise Unreadable(f"{args.key}: cannot read the key ({exc})") from None
        since = None
        if args.since is not None:
            try:
                with open(args.since, encoding="utf-8") as fh:
                    since = fh.read(1 << 20)
            except (OSError, UnicodeDecodeError) as exc:
                raise Unreadable(f"{args.since}: cannot read it ({exc})") from None
            if since.lstrip().startswith("{"):
                old = _load(args.since)
                since = old.get("checkpoint") if isinstance(old, dict) else None
                if not isinstance(since, str):
                    raise Unreadable(f"{args.since}: an export without a checkpoint")
        policy = None
        if args.policy is not None:
            try:
                with open(args.policy, encoding="utf-8", errors="surrogateescape") as fh:
                    policy = parse_policy(fh.read(1 << 20))
            except OSError as exc:
                raise Unreadable(f"{args.policy}: cannot read the policy ({exc.strerror})") from None
        report = check_file(args.export, key_text, since, policy)
    except Unreadable as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        print(f"audit_verify: cannot check: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        span = "no blocks" if report.first is None else f"blocks {report.first}..{report.last}"
        scope = "" if report.complete else f" (a range export of a log of {report.tree_size} blocks)"
        signer = "the given key" if not report.key_rotations else (
            f"the key the given one was rotated to ({report.key_rotations} rotation(s), each signed by both keys)")
        print(f"ok: {span} verified{scope} against the checkpoint of {report.origin} (tree size {report.tree_size}, "
              f"head {report.root[:16] if report.root else '?'}), signed by {signer}; "
              f"{report.with_changes} changes and {report.with_state} state records checked")
        for n in report.notes:
            print(f"  note: {n}")
    else:
        where = f"at block {report.first_bad}" if report.first_bad is not None else "(not tied to one block)"
        print(f"FAILED {where}")
        for p in report.to_dict()["problems"]:
            print(f"  {p}")
    return EXIT_OK if report.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
