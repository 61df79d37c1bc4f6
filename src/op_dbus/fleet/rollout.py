"""Staged rollouts coordinated by the collector: a wave opens when every host of the waves before it reported the
commit applied (an `apply` block, so its probes passed); a host reporting a failed apply halts the rollout.

Hosts ask whether their wave is open with a note signed by their log key (`op-dbus rollout gate v1`, origin,
commit, time), so the gate answers only enrolled hosts; operators start, halt and resume with an operator token.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from op_dbus.errors import InvalidInput
from op_dbus.fleet import db
from op_dbus.fleet.witness import Reply
from op_dbus.ledger import note

GATE_HEADER = "op-dbus rollout gate v1"
GATE_SKEW = 300.0  # seconds a gate request's time may differ from ours
_COMMIT = re.compile(r"[0-9a-f]{7,64}")


def plan_waves(spec: list[str], hosts: list[str]) -> list[list[str]]:
    """Waves from `spec` items: `NAME,NAME...` (these hosts) or `N%` (up to N % of all hosts, counting the
    waves before). Each host is in exactly one wave; hosts left over join the last wave."""
    remaining = sorted(hosts)
    waves: list[list[str]] = []
    placed = 0
    for item in spec:
        if item.endswith("%"):
            try:
                percent = float(item[:-1])
            except ValueError:
                raise InvalidInput(f"wave {item!r}: expected N% or host names") from None
            if not 0 < percent <= 100:
                raise InvalidInput(f"wave {item!r}: the percentage must be in (0, 100]")
            target = math.ceil(len(hosts) * percent / 100)
            take = max(0, target - placed)
            wave, remaining = remaining[:take], remaining[take:]
        else:
            names = [n for n in item.split(",") if n]
            unknown = [n for n in names if n not in hosts]
            if unknown:
                raise InvalidInput(f"wave {item!r}: not enrolled: {', '.join(unknown)}")
            wave = [n for n in names if n in remaining]
            remaining = [n for n in remaining if n not in wave]
        placed += len(wave)
        if wave:
            waves.append(wave)
    if remaining:
        if not waves:
            waves.append([])
        waves[-1].extend(remaining)
    return waves


class Rollouts:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, commit: str, spec: list[str]) -> dict[str, Any]:
        if not _COMMIT.fullmatch(commit):
            raise InvalidInput(f"commit {commit!r}: expected a hex commit id")
        now = time.time()
        with self.engine.begin() as conn:
            names = [r.name for r in conn.execute(select(db.hosts.c.name).where(db.hosts.c.revoked.is_(None)))]
            waves = plan_waves(spec or ["100%"], names)
            if conn.execute(select(db.rollouts.c.commit).where(db.rollouts.c.commit == commit)).first() is not None:
                raise InvalidInput(f"a rollout of {commit} exists already")
            conn.execute(db.rollouts.insert().values(commit=commit, waves=json.dumps(waves), opened=1, state="running",
                                                     reason=None, created=now, updated=now))
        return self.get(commit) or {}

    def get(self, commit: str) -> dict[str, Any] | None:
        with db.reading(self.engine) as conn:
            row = conn.execute(select(db.rollouts).where(db.rollouts.c.commit == commit)).first()
        return None if row is None else _row(row)

    def all(self) -> list[dict[str, Any]]:
        with db.reading(self.engine) as conn:
            return [_row(r) for r in conn.execute(select(db.rollouts).order_by(db.rollouts.c.created))]

    def set_state(self, commit: str, state: str, reason: str | None = None) -> dict[str, Any]:
        with self.engine.begin() as conn:
            done = conn.execute(update(db.rollouts).where(db.rollouts.c.commit == commit)
                                .values(state=state, reason=reason, updated=time.time())).rowcount
        if not done:
            raise InvalidInput(f"no rollout of {commit}")
        return self.get(commit) or {}

    def on_footprint(self, conn: Connection, host: str, doc: dict[str, Any], now: float) -> None:
        """Advance or halt the running rollouts this host's new footprint concerns (in the footprint's transaction)."""
        from op_dbus.fleet.fleetview import FleetView

        for row in conn.execute(select(db.rollouts).where(db.rollouts.c.state == "running")).all():
            waves = json.loads(row.waves)
            open_hosts = [h for w in waves[: row.opened] for h in w]
            if host not in open_hosts:
                continue
            last = doc.get("last_apply") or {}
            if last.get("result") == "failed":
                reason = f"{host} failed to apply {row.commit} (block {last.get('index')})"
                conn.execute(update(db.rollouts).where(db.rollouts.c.commit == row.commit)
                             .values(state="halted", reason=reason, updated=now))
                FleetView._alert(conn, host, "rollout-halted", True, reason, now)
                continue
            if row.opened >= len(waves):
                continue
            applied = _hosts_with_commit(conn, open_hosts, row.commit)
            if set(open_hosts) <= applied:
                conn.execute(update(db.rollouts).where(db.rollouts.c.commit == row.commit,
                                                       db.rollouts.c.opened == row.opened)
                             .values(opened=row.opened + 1, updated=now))

    def gate(self, body: bytes) -> Reply:
        """Answer a host's signed question "is my wave open for this commit?" as JSON."""
        try:
            signed = note.parse(body)
            lines = signed.text[:-1].split("\n")
            if len(lines) != 4 or lines[0] != GATE_HEADER or not lines[3].isdigit():
                raise ValueError(f"a gate request is '{GATE_HEADER}', the origin, the commit, the time")
            origin, commit, asked = lines[1], lines[2], int(lines[3])
        except (ValueError, note.NoteError) as exc:
            return Reply(400, f"{exc}\n")
        if abs(time.time() - asked) > GATE_SKEW:
            return Reply(400, "the gate request's time is too far from ours (clock or replay)\n")
        with db.reading(self.engine) as conn:
            host = conn.execute(select(db.hosts).where(db.hosts.c.origin == origin)).first()
            if host is None:
                return Reply(404, f"unknown log origin {origin!r}\n")
            if host.revoked is not None:
                return Reply(403, f"host {host.name!r} is revoked\n")
            try:
                note.open_note(body, [note.Verifier.from_vkey(host.vkey)])
            except note.NoteError as exc:
                return Reply(403, f"{exc}\n")
            row = conn.execute(select(db.rollouts).where(db.rollouts.c.commit == commit)).first()
        if row is None:
            answer = {"commit": commit, "open": False, "state": "unknown"}
        else:
            waves = json.loads(row.waves)
            wave = next((i for i, w in enumerate(waves) if host.name in w), None)
            is_open = row.state == "running" and wave is not None and wave < row.opened
            answer = {"commit": commit, "open": is_open, "state": row.state, "wave": wave, "opened": row.opened}
        return Reply(200, json.dumps(answer) + "\n", "application/json")


def _hosts_with_commit(conn: Connection, names: list[str], commit: str) -> set[str]:
    """Hosts whose latest footprint says `commit` was applied successfully."""
    f = db.footprints
    done = set()
    for name in names:
        latest = conn.execute(select(f.c.note).where(f.c.host == name).order_by(f.c.id.desc()).limit(1)).scalar()
        if latest is None:
            continue
        doc = json.loads(note.parse(latest).text.split("\n")[2])
        if doc.get("commit") == commit and (doc.get("last_apply") or {}).get("result") == "ok":
            done.add(name)
    return done


def _row(row: Any) -> dict[str, Any]:
    return {"commit": row.commit, "waves": json.loads(row.waves), "opened": row.opened, "state": row.state,
            "reason": row.reason, "created": row.created, "updated": row.updated}


def gate_text(origin: str, commit: str, now: float) -> str:
    return f"{GATE_HEADER}\n{origin}\n{commit}\n{int(now)}\n"
