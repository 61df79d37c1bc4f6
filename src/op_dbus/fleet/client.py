"""The host side of witnessing (standard library only): send the latest checkpoint, keep the cosignature.

For each collector (its URL and its witness verifier key) the host sends `old` = the largest size that witness
has cosigned for it (from its own `cosignatures` table), the RFC 6962 consistency proof from there, and its
latest signed checkpoint. A 409 names the witness's size: when the host's log holds that size the request is
made again from it once (the host lost its record, or another process of this host reported first).
"""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from op_dbus.ledger import cosignature, note
from op_dbus.ledger.cosignature import WitnessVerifier

DEFAULT_TIMEOUT = 3.0
MAX_REPLY = 64 * 1024


@dataclass(frozen=True)
class Collector:
    url: str
    verifier: WitnessVerifier

    @classmethod
    def parse(cls, url: str, vkey: str) -> Collector:
        if not url.startswith(("http://", "https://")):
            raise note.NoteError(f"collector URL {url!r} must start with http:// or https://")
        return cls(url.rstrip("/"), WitnessVerifier.from_vkey(vkey))


@dataclass(frozen=True)
class Outcome:
    collector: str
    ok: bool
    size: int
    status: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"collector": self.collector, "ok": self.ok, "size": self.size, "status": self.status,
                "message": self.message}


def request_body(old: int, proof: list[bytes], checkpoint: str) -> bytes:
    lines = [f"old {old}", *(base64.b64encode(h).decode() for h in proof)]
    return ("\n".join(lines) + "\n\n" + checkpoint).encode()


def _post(url: str, body: bytes, timeout: float) -> tuple[int, str, str]:
    req = urllib.request.Request(url + "/add-checkpoint", data=body, method="POST",
                                 headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(MAX_REPLY).decode("utf-8", "replace"), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(MAX_REPLY).decode("utf-8", "replace"), exc.headers.get("Content-Type", "")


def send(ledger: Any, target: Collector, *, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """Have `target` cosign the log's latest checkpoint; keep the cosignature. Never raises for network trouble."""
    size = len(ledger)
    if size == 0:
        return Outcome(target.url, False, 0, None, "the audit log is empty: nothing to witness")
    db_path = str(ledger.db_path)
    vkey = target.verifier.vkey
    checkpoint = ledger.checkpoint(size)
    text = note.parse(checkpoint).text
    old = cosignature.last_cosigned(db_path, vkey)
    if old > size:
        old = 0  # our record is ahead of our log: ask the witness where it stands
    for _attempt in range(2):
        proof = ledger.consistency_proof(old, size) if 0 < old < size else []
        try:
            status, reply, ctype = _post(target.url, request_body(old, proof, checkpoint), timeout)
        except (OSError, urllib.error.URLError) as exc:
            reason = getattr(exc, "reason", exc)
            return Outcome(target.url, False, size, None, f"collector unreachable: {reason}")
        if status == 200:
            for line in reply.splitlines():
                if target.verifier.verify_line(text, line) is not None:
                    cosignature.record(db_path, vkey, size, line)
                    return Outcome(target.url, True, size, status, f"cosigned size {size}")
            return Outcome(target.url, False, size, status, "the reply carries no valid cosignature from this witness")
        if status == 409 and ctype.startswith("text/x.tlog.size"):
            held = reply.strip()
            if held.isdigit() and int(held) != old and int(held) <= size:
                old = int(held)
                continue
            if held.isdigit() and int(held) > size:
                return Outcome(target.url, False, size, status,
                               f"the witness holds size {held}, more than this log's {size}: the log was cut")
        return Outcome(target.url, False, size, status, reply.strip()[:200] or f"HTTP {status}")
    return Outcome(target.url, False, size, 409, "the witness's size kept moving")


def join(url: str, token: str, name: str, vkey: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Enroll this host at a collector with a one-time token; returns the collector's answer (with its witness key)."""
    import json

    req = urllib.request.Request(url.rstrip("/") + "/v1/join", method="POST",
                                 data=json.dumps({"token": token, "name": name, "vkey": vkey}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read(MAX_REPLY))
    except urllib.error.HTTPError as exc:
        raise PermissionError(f"the collector refused: HTTP {exc.code}: "
                              f"{exc.read(MAX_REPLY).decode('utf-8', 'replace').strip()[:200]}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("witness"), str):
        raise ValueError("the collector's answer carries no witness key")
    WitnessVerifier.from_vkey(answer["witness"])
    return answer


FOOTPRINT_HEADER = "op-dbus footprint v1"
RESULT_KINDS = {"apply": "ok", "rollback": "ok", "confirm": "ok", "failed": "failed"}


def footprint(ledger: Any, mode: str) -> dict[str, Any]:
    """What this host says of itself, from its log only: hashes and counters, never a state value or a secret."""
    from datetime import UTC, datetime

    from op_dbus import __version__

    size = len(ledger)
    headers = ledger.headers(max(0, size - 1000)) if size else []
    head = headers[-1] if headers else None
    drift = 0
    last_apply: dict[str, Any] = {}
    commit = None
    for h in reversed(headers):
        if h.kind in RESULT_KINDS:
            last_apply = {"index": h.index, "kind": h.kind, "result": RESULT_KINDS[h.kind], "time": h.time}
            value = h.meta.get("commit") if isinstance(h.meta, dict) else None
            commit = value if isinstance(value, str) else None
            break
        if h.kind == "drift":
            drift += 1
    return {
        "head": {"index": head.index, "hash": head.hash, "state_hash": head.state_hash, "time": head.time}
        if head else {},
        "plugin_state_hashes": dict(head.plugin_state_hashes) if head else {},
        "drift": drift, "last_apply": last_apply, "commit": commit, "mode": mode, "version": __version__,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def send_footprint(ledger: Any, target: Collector, mode: str, *, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """Sign this host's footprint with its log key (a C2SP signed note) and post it to `target`."""
    import json

    from op_dbus.ledger import keys

    body = footprint(ledger, mode)
    text = f"{FOOTPRINT_HEADER}\n{ledger.origin}\n{json.dumps(body, sort_keys=True, separators=(',', ':'))}\n"
    signed = note.sign(text, [note.Signer(ledger.origin, keys.load_private_key(ledger.key_path))])
    req = urllib.request.Request(target.url + "/v1/footprint", data=signed.encode(), method="POST",
                                 headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Outcome(target.url, True, len(ledger), resp.status, "footprint sent")
    except urllib.error.HTTPError as exc:
        return Outcome(target.url, False, len(ledger), exc.code,
                       exc.read(MAX_REPLY).decode("utf-8", "replace").strip()[:200])
    except OSError as exc:
        return Outcome(target.url, False, len(ledger), None, f"collector unreachable: {getattr(exc, 'reason', exc)}")


def api_get(url: str, path: str, token: str, *, timeout: float = 10.0, data: Any = None) -> Any:
    """GET (or, with `data`, POST as JSON) a collector API endpoint with an API token; raises PermissionError /
    OSError / ValueError."""
    import json

    req = urllib.request.Request(url.rstrip("/") + path, headers={"Authorization": f"Bearer {token}",
                                                                  "Content-Type": "application/json"},
                                 data=None if data is None else json.dumps(data).encode(),
                                 method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read(16 << 20))
    except urllib.error.HTTPError as exc:
        message = exc.read(MAX_REPLY).decode("utf-8", "replace").strip()[:200]
        if exc.code in (401, 403):
            raise PermissionError(f"the collector refused: HTTP {exc.code}: {message}") from None
        raise ValueError(f"HTTP {exc.code}: {message}") from None


def gate_open(ledger: Any, target: Collector, commit: str, *, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Ask the collector whether this host's rollout wave is open for `commit` (signed by the log key).
    The pluggable gate for staged rollouts: {"open": bool, "state": ..., "wave": ..., "opened": ...}."""
    import json
    import time

    from op_dbus.ledger import keys

    text = f"op-dbus rollout gate v1\n{ledger.origin}\n{commit}\n{int(time.time())}\n"
    signed = note.sign(text, [note.Signer(ledger.origin, keys.load_private_key(ledger.key_path))])
    req = urllib.request.Request(target.url + "/v1/rollout/gate", data=signed.encode(), method="POST",
                                 headers={"Content-Type": "text/plain; charset=utf-8"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read(MAX_REPLY))
    except urllib.error.HTTPError as exc:
        raise PermissionError(f"the collector refused: HTTP {exc.code}: "
                              f"{exc.read(MAX_REPLY).decode('utf-8', 'replace').strip()[:200]}") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("open"), bool):
        raise ValueError("the collector's gate answer is malformed")
    return answer
