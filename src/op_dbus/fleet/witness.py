"""The witness: C2SP tlog-witness add-checkpoint over the collector database, with enrollment, evidence and alerts.

The check of `old` against the stored size and the update to the new (size, root) are one conditional UPDATE
in one transaction (`... WHERE origin = ? AND size = old`): of two requests racing from the same old size, in
one process or in several over one PostgreSQL, exactly one matches a row; the other gets 409.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, case, func, select, update
from sqlalchemy.exc import IntegrityError

from op_dbus.errors import InvalidInput
from op_dbus.fleet import db
from op_dbus.ledger import merkle, note
from op_dbus.ledger.cosignature import WitnessSigner

MAX_BODY = 64 * 1024
MAX_PROOF_LINES = 63
_OLD = re.compile(r"old (0|[1-9][0-9]{0,19})")


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body, content type."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


def _bad(message: str) -> Reply:
    return Reply(400, message + "\n")


@dataclass(frozen=True)
class AddCheckpoint:
    old: int
    proof: list[bytes]
    checkpoint: str  # the signed note, exactly as sent


def parse_request(body: bytes) -> AddCheckpoint:
    """Split an add-checkpoint body: `old N`, proof lines, an empty line, the signed checkpoint."""
    if len(body) > MAX_BODY:
        raise ValueError("request body is too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("request body is not UTF-8") from None
    head, sep, checkpoint = text.partition("\n\n")
    if not sep:
        raise ValueError("request body has no empty line before the checkpoint")
    lines = head.split("\n")
    match = _OLD.fullmatch(lines[0])
    if not match or int(match.group(1)) >= 1 << 64:
        raise ValueError("the first line must be 'old <size>' (decimal, no leading zeroes)")
    if len(lines) - 1 > MAX_PROOF_LINES:
        raise ValueError(f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for i, line in enumerate(lines[1:], 1):
        try:
            h = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"proof line {i} is not base64") from None
        if len(h) != merkle.HASH_SIZE or base64.b64encode(h).decode() != line:
            raise ValueError(f"proof line {i} is not a base64 SHA-256 hash")
        proof.append(h)
    return AddCheckpoint(int(match.group(1)), proof, checkpoint)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(frozen=True)
class Host:
    name: str
    origin: str
    vkey: str
    revoked: bool


class Witness:
    """add-checkpoint and the host registry over one database; safe to share between threads and processes."""

    def __init__(self, engine: Engine, signer: WitnessSigner | None) -> None:
        """`signer` may be None for enrollment and reads; add-checkpoint needs it."""
        self.engine = engine
        self.signer = signer

    # -- enrollment ------------------------------------------------------------------------------------

    def enroll(self, name: str, vkey: str) -> Host:
        """Know host `name` by its log's verifier key (whose name is the log origin)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}", name):
            raise InvalidInput(f"host name {name!r}: use letters, digits, '.', '_' or '-' (at most 255)")
        try:
            verifier = note.Verifier.from_vkey(vkey)
        except note.NoteError as exc:
            raise InvalidInput(f"--key: {exc}") from None
        now = time.time()
        try:
            with self.engine.begin() as conn:
                existing = conn.execute(select(db.hosts).where(db.hosts.c.name == name)).first()
                if existing is not None and existing.revoked is None:
                    raise InvalidInput(f"host {name!r} is already enrolled (origin {existing.origin})",
                                       hint=f"op-dbus collector revoke {name} first to replace its key")
                if existing is not None:
                    conn.execute(db.hosts.delete().where(db.hosts.c.name == name))
                conn.execute(db.hosts.insert().values(name=name, origin=verifier.name, vkey=verifier.vkey,
                                                      enrolled=now, revoked=None))
                # A host enrolled again (after a revoke) keeps what the witness saw of its log.
                seen = conn.execute(select(db.witness_state.c.size)
                                    .where(db.witness_state.c.origin == verifier.name)).first()
                if seen is None:
                    conn.execute(db.witness_state.insert().values(origin=verifier.name, size=0, root=None,
                                                                  checkpoint=None, updated=now))
        except IntegrityError:
            raise InvalidInput(f"the log {verifier.name!r} is already enrolled under another name") from None
        return Host(name, verifier.name, verifier.vkey, False)

    def create_token(self, ttl: float) -> str:
        """A one-time enrollment token valid for `ttl` seconds; only its hash is stored, the token is shown once."""
        token = "odj_" + secrets.token_urlsafe(32)
        now = time.time()
        with self.engine.begin() as conn:
            conn.execute(db.tokens.insert().values(hash=_token_hash(token), created=now, expires=now + ttl))
        return token

    def join(self, token: str, name: str, vkey: str) -> Host:
        """Enroll `name` with `vkey` if `token` is a valid unused token; the token is spent in the same transaction."""
        now = time.time()
        with self.engine.begin() as conn:
            spent = conn.execute(update(db.tokens)
                                 .where(db.tokens.c.hash == _token_hash(token), db.tokens.c.used.is_(None),
                                        db.tokens.c.expires > now)
                                 .values(used=now, used_by=name[:255])).rowcount
            if spent != 1:
                raise PermissionError("the enrollment token is unknown, used or expired")
        try:
            return self.enroll(name, vkey)
        except InvalidInput:
            with self.engine.begin() as conn:  # the host's mistake must not burn the operator's token
                conn.execute(update(db.tokens).where(db.tokens.c.hash == _token_hash(token)).values(used=None,
                                                                                                     used_by=None))
            raise

    def revoke(self, name: str) -> None:
        with self.engine.begin() as conn:
            row = conn.execute(select(db.hosts).where(db.hosts.c.name == name)).first()
            if row is None:
                raise InvalidInput(f"no host named {name!r} is enrolled")
            conn.execute(update(db.hosts).where(db.hosts.c.name == name).values(revoked=time.time()))

    def hosts(self) -> list[Host]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(db.hosts).order_by(db.hosts.c.name)).all()
        return [Host(r.name, r.origin, r.vkey, r.revoked is not None) for r in rows]

    # -- add-checkpoint --------------------------------------------------------------------------------

    def add_checkpoint(self, body: bytes) -> Reply:
        """C2SP tlog-witness add-checkpoint. Authentication and the proof are checked against a read of the
        witness state without holding any lock; the update is then one compare-and-swap on the size read. That
        is safe because a log's stored size never decreases and the root of a stored size never changes: if the
        size is still the one the proof was checked from, so is the root."""
        signer = self.signer
        if signer is None:
            raise RuntimeError("add-checkpoint needs the witness key")
        try:
            req = parse_request(body)
            signed = note.parse(req.checkpoint)
            cp = note.parse_checkpoint(signed.text)
        except (ValueError, note.NoteError) as exc:
            return _bad(str(exc))
        h, w = db.hosts, db.witness_state
        with db.reading(self.engine) as conn:
            row = conn.execute(select(h.c.name, h.c.vkey, h.c.revoked, w.c.size, w.c.root, w.c.checkpoint)
                               .select_from(h.outerjoin(w, w.c.origin == h.c.origin))
                               .where(h.c.origin == cp.origin)).first()
        if row is None:
            return Reply(404, f"unknown log origin {cp.origin!r}\n")
        host_name = str(row.name)
        if row.revoked is not None:
            return Reply(403, f"host {host_name!r} is revoked: its checkpoints are no longer trusted\n")
        try:
            note.open_note(req.checkpoint, [note.Verifier.from_vkey(row.vkey)])
        except note.NoteError as exc:
            return Reply(403, f"{exc}\n")
        if req.old > cp.size:
            return _bad(f"old size {req.old} is larger than the checkpoint size {cp.size}")
        stored_size = int(row.size or 0)
        stored_root = None if row.root is None else bytes(row.root)
        if stored_root is not None and cp.size == stored_size and stored_root != cp.root:
            # Two signed heads for one size: no proof can reconcile them, whatever `old` says.
            self._evidence(host_name, cp.origin, "equivocation", row.checkpoint, req,
                           f"two different roots signed for size {cp.size}")
            return Reply(409, f"{stored_size}\n", "text/x.tlog.size")
        if req.old != stored_size:
            return Reply(409, f"{stored_size}\n", "text/x.tlog.size")
        if req.old == 0:
            if req.proof:
                return Reply(422, "the proof must be empty when old is 0\n")
        elif cp.size == req.old:
            if req.proof:
                return Reply(422, "the proof must be empty when old equals the checkpoint size\n")
        else:
            try:
                merkle.verify_consistency(req.old, cp.size, req.proof, stored_root or b"", cp.root)
            except merkle.ProofError as exc:
                self._evidence(host_name, cp.origin, "inconsistent", row.checkpoint, req,
                               f"consistency proof from {req.old} to {cp.size} does not hold: {exc}")
                return Reply(422, f"consistency proof does not verify: {exc}\n")
        now = time.time()
        with self.engine.begin() as conn:
            swapped = conn.execute(
                update(w).where(w.c.origin == cp.origin, w.c.size == req.old)
                .values(size=cp.size, root=cp.root, checkpoint=req.checkpoint, updated=now)
            ).rowcount
            if swapped != 1:
                # Another request moved the log on since our read (nothing was written).
                current = conn.execute(select(w.c.size).where(w.c.origin == cp.origin)).scalar()
                return Reply(409, f"{int(current or 0)}\n", "text/x.tlog.size")
            # Signed before the commit: the cosignature is handed out only once the new head is durable.
            line = signer.cosign(signed.text, int(now))
        return Reply(200, line)

    def _evidence(self, host: str, origin: str, kind: str, stored: str | None, req: AddCheckpoint,
                  detail: str) -> None:
        """Keep both signed checkpoints and raise an `equivocation` alert, in one transaction."""
        now = time.time()
        with self.engine.begin() as conn:
            self._record_evidence(conn, host, origin, kind, stored, req, detail, now)

    @staticmethod
    def _record_evidence(conn: Connection, host: str, origin: str, kind: str, stored: str | None,
                         req: AddCheckpoint, detail: str, now: float) -> None:
        conn.execute(db.evidence.insert().values(
            origin=origin, kind=kind, stored=stored, submitted=req.checkpoint,
            proof="\n".join(base64.b64encode(h).decode() for h in req.proof) + f"\nold {req.old}",
            detail=detail, time=now))
        conn.execute(db.alerts.insert().values(host=host, kind="equivocation", detail=detail, time=now, cleared=None))

    def current_size(self, origin: str) -> int:
        with self.engine.connect() as conn:
            size = conn.execute(select(db.witness_state.c.size).where(db.witness_state.c.origin == origin)).scalar()
        return int(size or 0)

    def status(self, *, stale_after: float = 3600.0) -> dict[str, object]:
        """The fleet at a glance: hosts enrolled/revoked, witnessed, silent for `stale_after` s, open alerts by kind."""
        now = time.time()
        h, w = db.hosts, db.witness_state
        with self.engine.connect() as conn:
            row = conn.execute(
                select(func.count(), func.count(h.c.revoked),
                       func.count(case((w.c.size > 0, 1))),
                       func.count(case(((w.c.updated < now - stale_after) & h.c.revoked.is_(None), 1))))
                .select_from(h.outerjoin(w, w.c.origin == h.c.origin))).one()
            kinds = conn.execute(select(db.alerts.c.kind, func.count()).where(db.alerts.c.cleared.is_(None))
                                 .group_by(db.alerts.c.kind)).all()
        return {"hosts": int(row[0]), "revoked": int(row[1]), "witnessed": int(row[2]), "stale": int(row[3]),
                "stale_after": stale_after, "alerts": {str(k): int(n) for k, n in kinds}}

    def evidence(self, origin: str | None = None) -> list[dict[str, object]]:
        query = select(db.evidence).order_by(db.evidence.c.id)
        if origin is not None:
            query = query.where(db.evidence.c.origin == origin)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def alerts(self, *, open_only: bool = True) -> list[dict[str, object]]:
        query = select(db.alerts).order_by(db.alerts.c.id)
        if open_only:
            query = query.where(db.alerts.c.cleared.is_(None))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]
