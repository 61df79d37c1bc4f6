"""The dashboard's data over both databases (SQLite and a throwaway PostgreSQL): users, sessions and login limits;
the overview's statuses, filters, sorting and pages from real signed footprints; the summary migration."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, text

from op_dbus.errors import InvalidInput
from op_dbus.fleet import db
from op_dbus.fleet.client import footprint
from op_dbus.fleet.dashboard import PAGE_SIZE, Dashboard, drift_chart
from op_dbus.fleet.fleetview import FleetView, footprint_text
from op_dbus.fleet.users import MAX_FAILURES_PER_USER, RateLimited, Users
from op_dbus.fleet.witness import Witness
from op_dbus.ledger import Ledger, keys, note
from op_dbus.ledger.cosignature import WitnessSigner
from tests.fleet.test_witness import body_for, grow


@pytest.fixture
def witness(db_url: str) -> Witness:
    engine = db.make_engine(db_url)
    db.migrate(engine)
    return Witness(engine, WitnessSigner("witness.test/w1", Ed25519PrivateKey.generate()))


def test_users_sessions_and_login_limits(witness: Witness) -> None:
    users = Users(witness.engine)
    with pytest.raises(InvalidInput, match="at least"):
        users.add("alice", "operator", "short")
    with pytest.raises(InvalidInput, match="user name"):
        users.add("<b>x", "operator", "long enough password")
    with pytest.raises(InvalidInput, match="--role"):
        users.add("alice", "admin", "long enough password")
    users.add("alice", "operator", "long enough password")
    with witness.engine.connect() as conn:
        stored = conn.execute(select(db.users.c.password)).scalar()
    assert stored.startswith("scrypt$") and "long enough" not in stored
    cookie, session = users.login("alice", "long enough password", "10.0.0.1")
    assert session.role == "operator" and len(session.csrf) > 30
    found = users.session(cookie)
    assert found is not None and found.user == "alice" and found.csrf == session.csrf
    assert users.session(cookie + "x") is None
    # Only the cookie's hash is stored.
    with witness.engine.connect() as conn:
        assert cookie.encode() not in b"".join(r.hash for r in conn.execute(select(db.sessions.c.hash)))
    # A new password ends the old sessions; logout ends one.
    users.add("alice", "viewer", "another long password")
    assert users.session(cookie) is None
    cookie, _ = users.login("alice", "another long password", "10.0.0.1")
    users.logout(cookie)
    assert users.session(cookie) is None
    for _ in range(MAX_FAILURES_PER_USER):
        with pytest.raises(PermissionError):
            users.login("alice", "wrong", "10.0.0.2")
    with pytest.raises(RateLimited):
        users.login("alice", "another long password", "10.0.0.3")
    with pytest.raises(PermissionError):  # an unknown user is refused like a wrong password
        users.login("nobody", "whatever", "10.0.0.4")
    assert users.remove("alice") and not users.remove("alice")


def _enroll(witness: Witness, name: str) -> note.Signer:
    key = Ed25519PrivateKey.generate()
    signer = note.Signer(f"op-dbus/test/{name}", key)
    witness.enroll(name, signer.verifier.vkey)
    return signer


def _report(view: FleetView, signer: note.Signer, **fields: object) -> None:
    doc = {"head": {"index": 3}, "drift": 0, "last_apply": {"result": "ok", "index": 3}, "commit": None,
           "mode": "enforce", **fields}
    assert view.add_footprint(note.sign(footprint_text(signer.name, doc), [signer]).encode()).status == 200


def test_overview_statuses_filters_sorting_and_pages(witness: Witness, tmp_path: Path) -> None:
    view, dash = FleetView(witness.engine), Dashboard(witness)
    # One real host log, reported the way a host does it (the client's own footprint).
    with Ledger.open(tmp_path / "web") as log:
        grow(log, 3)
        witness.enroll("web000", log.verifier_key)
        assert witness.add_checkpoint(body_for(log, 0)).status == 200
        signed = note.sign(footprint_text(log.origin, footprint(log, "agent")),
                           [note.Signer(log.origin, keys.load_private_key(log.key_path))])
        assert view.add_footprint(signed.encode()).status == 200
    signers = {f"web{i:03d}": _enroll(witness, f"web{i:03d}") for i in range(1, PAGE_SIZE + 10)}
    for name, signer in signers.items():
        n = int(name[3:])
        if n % 10 == 1:
            _report(view, signer, drift=n)
        elif n == 2:
            _report(view, signer, last_apply={"result": "failed", "index": 4})
        elif n == 3:
            continue  # never reported
        else:
            _report(view, signer, commit=f"{n:040x}")
    _enroll(witness, "db1")
    witness.revoke("db1")
    o = dash.overview()
    drifting = [f"web{i:03d}" for i in range(1, PAGE_SIZE + 10) if i % 10 == 1]
    assert o["counts"]["drifting"] == len(drifting) and o["counts"]["failing"] == 1
    assert o["counts"]["unknown"] == 1 and o["counts"]["revoked"] == 1
    assert o["total"] == PAGE_SIZE + 11 and o["pages"] == 2 and len(o["hosts"]) == PAGE_SIZE
    assert o["hosts"][0]["name"] == "db1" and o["hosts"][1]["witnessed_size"] == 3
    second = dash.overview(page=2)
    assert [h["name"] for h in second["hosts"]][-1] == f"web{PAGE_SIZE + 9:03d}"
    assert dash.overview(page=99)["page"] == 2
    only = dash.overview(status="drifting", sort="drift", desc=True)
    assert [h["name"] for h in only["hosts"]] == sorted(drifting, key=lambda n: -int(n[3:]))
    assert only["hosts"][0]["drift_since"] is not None
    assert [h["name"] for h in dash.overview(text="web01")["hosts"]][:2] == ["web010", "web011"]
    assert [h["name"] for h in dash.overview(text=f"{12:040x}")["hosts"]] == ["web012"]
    assert dash.overview(text="%")["total"] == 0  # LIKE wildcards are literal
    # Groups: a host may be in several; the filter combines with the others.
    assert dash.set_group("edge", ["web011", "web012", "web021"]) == 3
    assert dash.set_group("edge", ["web011"]) == 0 and dash.set_group("eu", ["web011"]) == 1
    assert [h["name"] for h in dash.overview(group="edge")["hosts"]] == ["web011", "web012", "web021"]
    assert [h["name"] for h in dash.overview(group="edge", status="drifting")["hosts"]] == ["web011", "web021"]
    assert dash.overview(group="edge")["groups"] == ["edge", "eu"]
    assert dash.set_group("edge", ["web012"], member=False) == 1
    with pytest.raises(InvalidInput, match="not enrolled"):
        dash.set_group("edge", ["nope"])
    with pytest.raises(InvalidInput, match="group"):
        dash.set_group("<x>", ["web011"])
    # drift_since holds while drift lasts, and clears with it.
    first = dash.overview(text="web011")["hosts"][0]["drift_since"]
    time.sleep(0.01)
    _report(view, signers["web011"], drift=12)
    assert dash.overview(text="web011")["hosts"][0]["drift_since"] == first
    _report(view, signers["web011"], drift=0)
    assert dash.overview(text="web011")["hosts"][0]["status"] == "ok"


def test_the_summary_migration_fills_from_stored_footprints(witness: Witness) -> None:
    view = FleetView(witness.engine)
    signer = _enroll(witness, "old1")
    _report(view, signer, drift=2, commit="abc1234")
    with witness.engine.begin() as conn:
        conn.execute(delete(db.host_summary))
        conn.execute(delete(db.schema_version).where(db.schema_version.c.version == 5))
        for table in ("users", "sessions", "login_failures", "host_summary", "host_groups"):
            conn.execute(text(f"DROP TABLE {table}"))
    assert db.migrate(witness.engine) == 4
    [row] = Dashboard(witness).overview()["hosts"]
    assert (row["name"], row["drift"], row["commit"], row["status"]) == ("old1", 2, "abc1234", "drifting")


def test_drift_chart_is_escaped_svg_with_steps() -> None:
    history = [{"received": 1000.0 + i, "footprint": {"drift": d}} for i, d in enumerate([0, 2, 2, 0])]
    svg = drift_chart(history)
    assert svg.startswith("<svg") and svg.count("<circle") == 4 and 'fill="#c0392b"' in svg and 'fill="#1e8449"' in svg
    assert "style=" not in svg and "<script" not in svg
    assert drift_chart([]).endswith("</svg>")


def test_the_session_cookie_is_secure_over_tls(tmp_path: Path) -> None:
    """Over HTTPS the session cookie carries Secure (with HttpOnly and SameSite=Strict); over HTTP it cannot."""
    import os
    import ssl
    import subprocess
    import sys
    import urllib.parse
    import urllib.request

    from tests.fleet.conftest import free_port, running
    from tests.fleet.test_collector_http import _self_signed

    (tmp_path / "c").mkdir(mode=0o700)
    (tmp_path / "k").mkdir(mode=0o700)
    db_url = f"sqlite:///{tmp_path}/c/fleet.db"
    cert, tls_key = _self_signed(tmp_path / "k")
    engine = db.make_engine(db_url, pool_size=1)
    db.migrate(engine)
    Users(engine).add("alice", "viewer", "long enough password")
    engine.dispose()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "op_dbus", "collector", "serve", "--db", db_url, "--key-file",
                             str(tmp_path / "k" / "witness.key"), "--listen", f"127.0.0.1:{port}", "--tls-cert",
                             str(cert), "--tls-key", str(tls_key)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=os.environ)
    context = ssl.create_default_context(cafile=str(cert))

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), NoRedirect)
    body = urllib.parse.urlencode({"user": "alice", "password": "long enough password"}).encode()
    with running(proc):
        deadline = time.monotonic() + 60
        while True:
            try:
                opener.open(f"https://127.0.0.1:{port}/ui/login", data=body, timeout=10)
            except urllib.error.HTTPError as exc:  # the 303 after a login
                assert exc.code == 303
                cookie = exc.headers["set-cookie"]
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.3)
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
    assert {"secure", "httponly", "samesite"} <= attributes and "samesite=strict" in cookie.lower()
