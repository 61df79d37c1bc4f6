"""Check an op-dbus audit log export with nothing but the file and the host's public key.

    python -m op_dbus.audit_verify audit.json --key host.pub
    python audit_verify.py audit.json --key host.pub --json     # this file alone works too

This module depends on the Python standard library and `cryptography` only, and imports nothing else
of op-dbus, so an auditor can copy this one file and run it anywhere. It checks:

  * the checkpoint: a C2SP signed note whose Ed25519 signature verifies under the given verifier key
    (`<name>+<hex key ID>+<base64 key>`, the content of the host's `host.pub`), naming that key's
    origin, the tree size and the tree head;
  * every block: its leaf hash recomputed from the exported header bytes (RFC 6962:
    SHA-256(0x00 || header)), its index, its `prev` link to the block before it, the SHA-256 of its
    changes and state records where the export carries them, and its inclusion proof against the
    checkpoint's tree head;
  * for an export that starts at block 0 and ends at the checkpoint's size, the tree head itself,
    recomputed from all leaves;
  * with `--since OLD` (a checkpoint or an earlier export seen before): that the log still extends it,
    i.e. the tree head over its first blocks is the one that was signed then (no history rewritten).
  * with `--policy POLICY` (C2SP tlog-policy: `log`, `witness NAME VKEY`, `group NAME K|all|any ...`,
    `quorum`): that the checkpoint is signed by a log of the policy and carries witness cosignatures
    (C2SP cosignature/v1, in the checkpoint or the export's `cosignatures`) that meet the quorum.

Exit status: 0 every check passed; 3 a check failed (the first bad block is named); 2 the export or
the key cannot be read (not JSON, truncated, wrong format).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EXPORT_FORMAT = "op-dbus audit log export"
EXPORT_VERSION = 1
ZERO_HASH = "0" * 64
SIG_PREFIX = "\u2014 "
MAX_PROBLEMS = 50
EXIT_OK, EXIT_UNREADABLE, EXIT_FAILED = 0, 2, 3


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
    blocks: int = 0
    with_changes: int = 0
    with_state: int = 0
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


def tree_head(leaves: list[bytes]) -> bytes:
    """The RFC 6962 tree head over all `leaves` (leaf hashes), built bottom-up."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    # Pair off the perfect subtrees left to right, then fold the leftover right edge.
    stack: list[tuple[int, bytes]] = []
    for h in leaves:
        level = 0
        while stack and stack[-1][0] == level:
            h = _node_hash(stack.pop()[1], h)
            level += 1
        stack.append((level, h))
    acc = stack[-1][1]
    for _, h in reversed(stack[:-1]):
        acc = _node_hash(h, acc)
    return acc


# -- C2SP signed notes and checkpoints --------------------------------------------------------------


@dataclass(frozen=True)
class VerifierKey:
    name: str
    key_id: bytes
    public: Ed25519PublicKey


def parse_verifier_key(text: str) -> VerifierKey:
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
    key_id = hashlib.sha256(name.encode() + b"\n" + raw).digest()[:4]
    if claimed != key_id:
        raise Unreadable(f"the key ID in the key ({hex_id}) does not match the key itself ({key_id.hex()})")
    return VerifierKey(name, key_id, Ed25519PublicKey.from_public_bytes(raw[1:]))


def open_checkpoint(signed: str, key: VerifierKey) -> tuple[str, int, bytes]:
    """Check the note's signature by `key` and return the checkpoint's (origin, size, root). Raises ValueError."""
    split = signed.rfind("\n\n")
    if split < 0 or not signed.endswith("\n"):
        raise ValueError("the checkpoint is not a signed note (no blank line before the signatures)")
    text, block = signed[: split + 1], signed[split + 2 :]
    verified = False
    for line in block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise ValueError(f"a signature line of the checkpoint is malformed: {line[:60]!r}")
        name, _, b64 = line[len(SIG_PREFIX) :].partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"the checkpoint's signature by {name!r} is not valid base64") from None
        if name != key.name or raw[:4] != key.key_id:
            continue  # a signature by another key (a witness, say): not ours to judge
        try:
            key.public.verify(raw[4:], text.encode())
        except InvalidSignature:
            raise ValueError(f"the checkpoint's signature by {name} does not verify with the given key") from None
        verified = True
    if not verified:
        raise ValueError(f"the checkpoint carries no signature by the given key {key.name} ({key.key_id.hex()})")
    lines = text[:-1].split("\n")
    if len(lines) < 3 or not lines[1].isdigit():
        raise ValueError("the checkpoint text is not <origin>, <size>, <base64 root>")
    try:
        root = base64.b64decode(lines[2], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the checkpoint's tree head is not valid base64") from None
    if len(root) != 32:
        raise ValueError("the checkpoint's tree head is not 32 bytes")
    return lines[0], int(lines[1]), root


# -- the export ---------------------------------------------------------------------------------------


def _hex32(value: Any) -> bytes:
    if not isinstance(value, str) or len(value) != 64:
        raise ValueError("not a 64-digit hex hash")
    return bytes.fromhex(value)


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
                           f"(got {digest[:16]}, header says {str(header.get(f'{what}_hash'))[:16]}): the record was edited")
        return False
    if what == "changes":
        try:
            changes = json.loads(text)
        except ValueError:
            report.fail(index, f"block {index}: its changes record is not JSON")
            return False
        if not isinstance(changes, list) or len(changes) != header.get("change_count"):
            report.fail(index, f"block {index}: its changes record does not hold change_count entries")
    return True


def verify_export(doc: Any, key_text: str, since: str | None = None) -> Report:
    """Check an export document (already parsed JSON) against the verifier key text (and an earlier checkpoint)."""
    key = parse_verifier_key(key_text)
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise Unreadable(f"the file is not an op-dbus audit log export (its \"format\" is not {EXPORT_FORMAT!r})")
    if doc.get("version") != EXPORT_VERSION:
        raise Unreadable(f"export version {doc.get('version')!r}; this verifier reads version {EXPORT_VERSION}")
    blocks = doc.get("blocks")
    if not isinstance(blocks, list):
        raise Unreadable("the export has no \"blocks\" list")
    report = Report()

    signed = doc.get("checkpoint")
    if not isinstance(signed, str):
        report.fail(None, "the export has no checkpoint: nothing signed to check the blocks against")
        return report
    try:
        origin, size, root = open_checkpoint(signed, key)
    except ValueError as exc:
        report.fail(None, f"checkpoint: {exc}")
        return report
    report.origin, report.tree_size, report.root = origin, size, root.hex()
    if origin != key.name:
        report.fail(None, f"checkpoint: it is for log {origin!r}, but the key is {key.name!r}")
    if doc.get("tree_size") not in (None, size):
        report.fail(None, f"the export says tree_size {doc.get('tree_size')}, its signed checkpoint says {size}")
    if doc.get("root") not in (None, root.hex()):
        report.fail(None, "the export's \"root\" is not the tree head its signed checkpoint commits to")

    leaves: list[bytes] = []
    prev_hash: str | None = None
    prev_index: int | None = None
    for position, block in enumerate(blocks):
        where = f"blocks[{position}]"
        if not isinstance(block, dict) or not isinstance(block.get("index"), int) or isinstance(block["index"], bool):
            report.fail(prev_index + 1 if prev_index is not None else None, f"{where}: not a block with an integer index")
            prev_hash = None
            continue
        index = block["index"]
        if prev_index is not None and index != prev_index + 1:
            report.fail(min(index, prev_index + 1), f"{where}: block {index} follows block {prev_index}: blocks are missing "
                                                    "or out of order")
            prev_hash = None
        prev_index = index
        report.first = index if report.first is None else report.first
        report.last = index
        report.blocks += 1
        leaf_text = block.get("header")
        if not isinstance(leaf_text, str):
            report.fail(index, f"block {index}: it has no header text")
            prev_hash = None
            continue
        leaf = leaf_text.encode("utf-8", "surrogatepass")
        lh = _leaf_hash(leaf)
        leaves.append(lh)
        if "leaf_hash" in block and block["leaf_hash"] != lh.hex():
            report.fail(index, f"block {index}: its header bytes hash to leaf {lh.hex()[:16]}, not the exported "
                               f"leaf_hash {str(block['leaf_hash'])[:16]}: the header was edited")
        try:
            header = json.loads(leaf)
            if not isinstance(header, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            report.fail(index, f"block {index}: its header is not a JSON object ({exc})")
            prev_hash = None
            continue
        if header.get("index") != index:
            report.fail(index, f"block {index}: its header says index {header.get('index')!r}")
        if index == 0 and header.get("prev") != ZERO_HASH:
            report.fail(index, "block 0: its prev is not 64 zeros")
        elif prev_hash is not None and header.get("prev") != prev_hash:
            report.fail(index, f"block {index}: prev {str(header.get('prev'))[:16]} does not name block {index - 1} "
                               f"(whose header hashes to {prev_hash[:16]})")
        prev_hash = hashlib.sha256(leaf).hexdigest()
        if _check_record(report, index, header, block, "changes"):
            report.with_changes += 1
        if _check_record(report, index, header, block, "state"):
            report.with_state += 1
        if not index < size:
            report.fail(index, f"block {index}: it is beyond the signed checkpoint (tree size {size})")
            continue
        try:
            proof = [_hex32(h) for h in block.get("inclusion_proof", [])]
            implied = root_from_proof(index, size, lh, proof)
        except (ValueError, TypeError) as exc:
            report.fail(index, f"block {index}: its inclusion proof is malformed ({exc})")
            continue
        if implied != root:
            report.fail(index, f"block {index}: its inclusion proof does not lead to the signed tree head of size {size}: "
                               "the block or its proof was edited")
    if report.first is not None and report.first > 0:
        report.notes.append(f"the export starts at block {report.first}: its link to block {report.first - 1} is "
                            "covered by its inclusion proof only")
    if report.first == 0 and report.last == size - 1 and len(leaves) == size:
        if tree_head(leaves) != root:
            report.fail(None, f"the tree head recomputed from all {size} blocks is not the signed one")
    elif report.last is not None and report.last < size - 1:
        report.notes.append(f"the export ends at block {report.last}; the signed log holds {size} blocks")
    if not blocks:
        report.notes.append("the export holds no blocks")
    if since is not None:
        _check_since(report, since, key, leaves, size, root)
    return report


def _check_since(report: Report, since: str, key: VerifierKey, leaves: list[bytes], size: int, root: bytes) -> None:
    """The log must extend a checkpoint seen earlier: same tree head over the blocks that checkpoint covered."""
    try:
        old_origin, old_size, old_root = open_checkpoint(since, key)
    except ValueError as exc:
        report.fail(None, f"--since: the earlier checkpoint does not verify: {exc}")
        return
    if old_origin != report.origin:
        report.fail(None, f"--since: the earlier checkpoint is for log {old_origin!r}, this export for {report.origin!r}")
    elif old_size > size:
        report.fail(None, f"--since: the log shrank: it had {old_size} blocks, the export's checkpoint says {size}")
    elif old_size == size and old_root != root:
        report.fail(None, f"--since: two different signed tree heads for the same size {size}: the history was rewritten")
    elif old_size == size:
        report.notes.append(f"the log is still the one signed at size {old_size}")
    elif report.first != 0 or len(leaves) < old_size:
        report.fail(None, "--since: checking against the earlier checkpoint needs the export to hold blocks "
                          f"0..{old_size - 1}")
    elif tree_head(leaves[:old_size]) != old_root:
        report.fail(None, f"--since: the first {old_size} blocks are not the ones signed earlier: the history was rewritten")
    else:
        report.notes.append(f"the log extends the earlier checkpoint of size {old_size}")



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


def _vkey(text: str, alg: int, what: str) -> tuple[str, bytes, bytes]:
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
                name, key_id, pub = _vkey(args[0], 0x01, "log key")
                if pub in seen_keys:
                    raise ValueError("duplicate key")
                seen_keys.add(pub)
                policy.logs.append(VerifierKey(name, key_id, Ed25519PublicKey.from_public_bytes(pub)))
            elif kind == "witness" and len(args) in (2, 3):
                label = args[0]
                if label == "none" or label in policy.witnesses or label in policy.groups:
                    raise ValueError(f"the name {label!r} is reserved or already defined")
                name, key_id, pub = _vkey(args[1], COSIGNATURE_ALG, f"witness {label}")
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
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise Unreadable(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        return json.loads(data)
    except UnicodeDecodeError as exc:
        raise Unreadable(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        hint = " (the file ends early: truncated?)" if exc.pos >= len(data.rstrip()) else ""
        raise Unreadable(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}{hint}") from None


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
    try:
        try:
            with open(args.key, encoding="utf-8") as fh:
                key_text = fh.read(64 * 1024)
        except (OSError, UnicodeDecodeError) as exc:
            raise Unreadable(f"{args.key}: cannot read the key ({exc})") from None
        doc = json.load(sys.stdin) if args.export == "-" else _load(args.export)
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
        report = verify_export(doc, key_text, since)
        if policy is not None:
            check_policy(report, doc, policy)
    except Unreadable as exc:
        if args.json:
            print(json.dumps({"ok": False, "error": str(exc)}))
        print(f"audit_verify: cannot check: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    except json.JSONDecodeError as exc:
        print(f"audit_verify: cannot check: stdin is not valid JSON: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif report.ok:
        span = "no blocks" if report.first is None else f"blocks {report.first}..{report.last}"
        print(f"ok: {span} verified against the checkpoint of {report.origin} (tree size {report.tree_size}, "
              f"head {report.root[:16] if report.root else '?'}), signed by the given key; "
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
