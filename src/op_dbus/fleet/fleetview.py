"""Footprints (what each host says it is, signed by its log key), the alerts they raise, and the read API's tokens."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

from sqlalchemy import Engine, func, select, update

from op_dbus.errors import InvalidInput
from op_dbus.fleet import db
from op_dbus.fleet.rollout import Rollouts
from op_dbus.fleet.witness import Reply
from op_dbus.ledger import note

FOOTPRINT_HEADER = "op-dbus footprint v1"
MAX_FOOTPRINT = 32 * 1024
ROLES = ("viewer", "operator")
# What a footprint may hold: anything else is refused, so a host cannot ship a secret by mistake.
FIELDS = {"head": dict, "plugin_state_hashes": dict, "drift": int, "last_apply": dict, "commit": (str, type(None)),
          "mode": str, "version": str, "time": str}


def footprint_text(origin: str, body: dict[str, Any]) -> str:
    """The note text of a footprint: a header line, the log origin, the body as one line of canonical JSON."""
    return f"{FOOTPRINT_HEADER}\n{origin}\n{json.dumps(body, sort_keys=True, separators=(',', ':'))}\n"


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class FleetView:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- footprints -------------------------------------------------------------------------------------

    def add_footprint(self, body: bytes) -> Reply:
        if len(body) > MAX_FOOTPRINT:
            return Reply(413, "footprint too large\n")
        try:
            signed = note.parse(body)
            lines = signed.text[:-1].split("\n")
            if len(lines) != 3 or lines[0] != FOOTPRINT_HEADER:
                raise ValueError(f"a footprint note is '{FOOTPRINT_HEADER}', the origin, one line of JSON")
            origin, doc = lines[1], json.loads(lines[2])
            if not isinstance(doc, dict):
                raise ValueError("the footprint is not a JSON object")
            for key, value in doc.items():
                if key not in FIELDS or not isinstance(value, FIELDS[key]):  # type: ignore[arg-type]
                    raise ValueError(f"footprint field {key!r} is unknown or of the wrong type")
        except (ValueError, note.NoteError) as exc:
            return Reply(400, f"{exc}\n")
        now = time.time()
        with self.engine.begin() as conn:
            host = conn.execute(select(db.hosts).where(db.hosts.c.origin == origin)).first()
            if host is None:
                return Reply(404, f"unknown log origin {origin!r}\n")
            if host.revoked is not None:
                return Reply(403, f"host {host.name!r} is revoked\n")
            try:
                note.open_note(body, [note.Verifier.from_vkey(host.vkey)])
            except note.NoteError as exc:
                return Reply(403, f"{exc}\n")
            conn.execute(db.footprints.insert().values(host=host.name, received=now, note=body.decode()))
            self._summarize(conn, host.name, doc, now)
            self._alert(conn, host.name, "stale", False, "", now)
            self._alert(conn, host.name, "drift", int(doc.get("drift", 0)) > 0,
                        f"{doc.get('drift')} drift block(s) since the last apply", now)
            last = doc.get("last_apply") or {}
            self._alert(conn, host.name, "apply-failed", last.get("result") == "failed",
                        f"the last apply failed (block {last.get('index')})", now)
            Rollouts(self.engine).on_footprint(conn, host.name, doc, now)
        return Reply(200, "ok\n")

    @staticmethod
    def _summarize(conn: Any, host: str, doc: dict[str, Any], now: float) -> None:
        """Keep the host's latest footprint in host_summary (drift_since survives while the drift lasts)."""
        s = db.host_summary
        before = conn.execute(select(s.c.drift, s.c.drift_since).where(s.c.host == host)).first()
        since = before.drift_since if before is not None and before.drift > 0 else None
        values = db.summary_values(host, doc, now, since)
        if before is None:
            conn.execute(s.insert().values(values))
        else:
            conn.execute(update(s).where(s.c.host == host).values(values))

    @staticmethod
    def _alert(conn: Any, host: str, kind: str, raised: bool, detail: str, now: float) -> None:
        """Open an alert of `kind` for `host` when raised and none is open; clear it when no longer raised."""
        a = db.alerts
        open_row = conn.execute(select(a.c.id).where(a.c.host == host, a.c.kind == kind, a.c.cleared.is_(None))).first()
        if raised and open_row is None:
            conn.execute(a.insert().values(host=host, kind=kind, detail=detail, time=now, cleared=None))
        elif not raised and open_row is not None:
            conn.execute(update(a).where(a.c.id == open_row.id).values(cleared=now))

    def sweep_stale(self, stale_after: float) -> int:
        """Raise a `stale` alert for every enrolled host with no footprint for `stale_after` seconds (counted from
        its enrollment when it never sent one); a footprint clears it. Returns how many were raised."""
        now = time.time()
        h, f = db.hosts, db.footprints
        latest = select(f.c.host, func.max(f.c.received).label("seen")).group_by(f.c.host).subquery()
        raised = 0
        with self.engine.begin() as conn:
            rows = conn.execute(select(h.c.name, h.c.enrolled, latest.c.seen)
                                .select_from(h.outerjoin(latest, latest.c.host == h.c.name))
                                .where(h.c.revoked.is_(None))).all()
            for r in rows:
                seen = r.seen if r.seen is not None else r.enrolled
                if now - seen > stale_after:
                    before = conn.execute(select(func.count()).where(db.alerts.c.host == r.name,
                                                                     db.alerts.c.kind == "stale",
                                                                     db.alerts.c.cleared.is_(None))).scalar()
                    if not before:
                        self._alert(conn, r.name, "stale", True, f"no report for {int(now - seen)} s", now)
                        raised += 1
        return raised

    # -- reads --------------------------------------------------------------------------------------------

    def hosts(self) -> list[dict[str, Any]]:
        h, w, f = db.hosts, db.witness_state, db.footprints
        latest = select(f.c.host, func.max(f.c.id).label("id")).group_by(f.c.host).subquery()
        query = (select(h.c.name, h.c.origin, h.c.revoked, w.c.size, w.c.updated, f.c.note, f.c.received)
                 .select_from(h.outerjoin(w, w.c.origin == h.c.origin).outerjoin(latest, latest.c.host == h.c.name)
                              .outerjoin(f, f.c.id == latest.c.id))
                 .order_by(h.c.name))
        with db.reading(self.engine) as conn:
            rows = conn.execute(query).all()
        return [self._host_row(r) for r in rows]

    @staticmethod
    def _host_row(r: Any) -> dict[str, Any]:
        footprint = None
        if r.note is not None:
            footprint = json.loads(note.parse(r.note).text.split("\n")[2])
        return {"name": r.name, "origin": r.origin, "revoked": r.revoked is not None, "witnessed_size": int(r.size or 0),
                "witnessed_at": r.updated, "footprint": footprint, "footprint_at": r.received}

    def host(self, name: str, history: int = 20) -> dict[str, Any] | None:
        found = [h for h in self.hosts() if h["name"] == name]
        if not found:
            return None
        f = db.footprints
        with db.reading(self.engine) as conn:
            rows = conn.execute(select(f.c.received, f.c.note).where(f.c.host == name)
                                .order_by(f.c.id.desc()).limit(history)).all()
        found[0]["history"] = [{"received": r.received, "footprint": json.loads(note.parse(r.note).text.split("\n")[2])}
                               for r in rows]
        return found[0]

    # -- API tokens ---------------------------------------------------------------------------------------

    def create_api_token(self, role: str, label: str) -> str:
        if role not in ROLES:
            raise InvalidInput(f"--role {role!r}: one of {', '.join(ROLES)}")
        token = "oda_" + secrets.token_urlsafe(32)
        with self.engine.begin() as conn:
            conn.execute(db.api_tokens.insert().values(hash=_hash(token), role=role, label=label, created=time.time()))
        return token

    def revoke_api_tokens(self, label: str) -> int:
        """Delete every API token with `label`; returns how many."""
        with self.engine.begin() as conn:
            return int(conn.execute(db.api_tokens.delete().where(db.api_tokens.c.label == label)).rowcount)

    def role_of(self, token: str) -> str | None:
        with db.reading(self.engine) as conn:
            role = conn.execute(select(db.api_tokens.c.role).where(db.api_tokens.c.hash == _hash(token))).scalar()
        return None if role is None else str(role)
