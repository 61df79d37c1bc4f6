"""The login1 plugin against the lab's real logind, with real PAM sessions, run as it will be run: op-dbus
installed inside the lab and started there as root (logind checks the caller's PID, so a client in the
host's PID namespace is refused some calls). `loginctl`, `pgrep` and logind's linger files are the oracles.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

LAB_KERNEL_ARGS = [f"systemd.mask={u}" for u in ("postgresql@15-main.service", "redis-server.service",
                                                  "nginx.service", "openvswitch-switch.service",
                                                  "ovsdb-server.service", "ovs-vswitchd.service")]
USERS = ("mallory", "eve")
_units = iter(range(1, 1000))


@pytest.fixture(scope="module")
def op(lab: Any) -> str:
    exe = lab.install_op_dbus()
    for name in USERS:
        lab.run(["useradd", "-m", name])
    (lab.root / "etc/op-dbus").mkdir(mode=0o755, exist_ok=True)
    return str(exe)


def sessions(lab: Any, user: str | None = None) -> list[str]:
    """Session ids logind lists (for `user`), excluding sessions already on their way out."""
    rows = [line.split() for line in lab.run(["loginctl", "list-sessions", "--no-legend"]).stdout.splitlines()]
    ids = [row[0] for row in rows if row and (user is None or row[2] == user)]
    return [i for i in ids if lab.run(["loginctl", "show-session", i, "-p", "State", "--value"],
                                      check=False).stdout.strip() not in ("closing", "")]


def login(lab: Any, user: str) -> str:
    """A real session through PAM (pam_systemd registers it with logind); returns its id."""
    before = set(sessions(lab, user))
    lab.run(["systemd-run", "-q", f"--unit=login-{user}-{next(_units)}", "-p", "PAMName=login", "-p", f"User={user}",
             "/bin/sleep", "600"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = set(sessions(lab, user)) - before
        if new:
            return new.pop()
        time.sleep(0.05)
    raise AssertionError(f"no logind session appeared for {user}")


def linger(lab: Any, user: str) -> bool:
    value = lab.run(["loginctl", "show-user", user, "-p", "Linger", "--value"], check=False).stdout.strip()
    return value == "yes" and (lab.root / "var/lib/systemd/linger" / user).exists()


def run(lab: Any, op: str, *args: str) -> Any:
    return lab.run([op, *args], check=False)


def apply(lab: Any, op: str, section: dict[str, Any], *extra: str) -> tuple[int, Any, str]:
    path = lab.root / "etc/op-dbus/login1.json"
    path.write_text(json.dumps({"version": 1, "plugins": {"login1": section}}))
    path.chmod(0o600)
    r = run(lab, op, "-o", "json", *extra, "apply", "/etc/op-dbus/login1.json")
    return r.returncode, (json.loads(r.stdout) if r.stdout.strip() else None), r.stderr


def test_linger_on_and_off(lab: Any, op: str) -> None:
    assert not linger(lab, "labuser")
    code, out, err = apply(lab, op, {"users": {"labuser": {"linger": True}}})
    assert code == 0, err
    assert [c["action"] for c in out["changes"]] == ["linger"]
    assert linger(lab, "labuser")
    # the user manager runs without any login
    assert lab.run(["systemctl", "is-active", "user@1000.service"], check=False).stdout.strip() == "active"
    assert apply(lab, op, {"users": {"labuser": {"linger": True}}})[1]["changes"] == []
    code, out, err = apply(lab, op, {"users": {"labuser": {"linger": False}}})
    assert code == 0, err
    assert [c["action"] for c in out["changes"]] == ["unlinger"]
    assert not linger(lab, "labuser")


def test_all_sessions_of_a_user_are_terminated(lab: Any, op: str) -> None:
    doomed = {login(lab, "mallory"), login(lab, "mallory")}
    keep = login(lab, "labuser")
    assert lab.run(["pgrep", "-u", "mallory", "sleep"], check=False).returncode == 0
    code, out, err = apply(lab, op, {"sessions": {"absent_for_users": ["mallory"]}})
    assert code == 0, err
    (change,) = out["changes"]
    assert change["action"] == "terminate" and set(change["before"]["sessions"]) == doomed
    assert change["after"] == {"sessions": [], "reversible": False}
    assert sessions(lab, "mallory") == []
    assert lab.run(["pgrep", "-u", "mallory"], check=False).returncode == 1  # TerminateUser: nothing of theirs runs
    assert keep in sessions(lab, "labuser")
    # converged: the same file again changes nothing
    assert apply(lab, op, {"sessions": {"absent_for_users": ["mallory"]}})[1]["changes"] == []
    # the audit log records the termination as irreversible
    block = json.loads(run(lab, op, "-o", "json", "blockchain", "show", str(out["block"]["index"])).stdout)
    assert block["changes"][0]["after"]["reversible"] is False


def test_one_session_by_id(lab: Any, op: str) -> None:
    first, second = login(lab, "eve"), login(lab, "eve")
    code, out, err = apply(lab, op, {"sessions": {"absent": [first]}})
    assert code == 0, err
    assert [(c["object"], c["action"]) for c in out["changes"]] == [(f"session {first}", "terminate")]
    assert sessions(lab, "eve") == [second]


def test_a_lingering_user_keeps_its_manager_and_loses_its_sessions(lab: Any, op: str) -> None:
    login(lab, "eve")
    code, out, err = apply(lab, op, {"users": {"eve": {"linger": True}}, "sessions": {"absent_for_users": ["eve"]}})
    assert code == 0, err
    assert [c["action"] for c in out["changes"]] == ["linger", "terminate"]
    assert sessions(lab, "eve") == []
    uid = lab.run(["id", "-u", "eve"]).stdout.strip()
    assert lab.run(["systemctl", "is-active", f"user@{uid}.service"], check=False).stdout.strip() == "active"
    assert linger(lab, "eve")
    assert apply(lab, op, {"users": {"eve": {"linger": False}}})[0] == 0


def test_query_shows_facts_and_introspect_round_trips(lab: Any, op: str) -> None:
    sid = login(lab, "labuser")
    q = run(lab, op, "query", "login1")
    assert q.returncode == 0, q.stderr
    section = json.loads(q.stdout)["login1"]
    facts = {s["id"]: s for s in section["status"]["sessions"]}
    assert facts[sid]["user"] == "labuser" and facts[sid]["uid"] == 1000
    assert facts[sid]["service"] == "login" and facts[sid]["state"] in ("active", "online")
    assert facts[sid]["since"].endswith("Z") and facts[sid]["remote"] is False
    assert {u["name"] for u in section["status"]["users"]} >= {"labuser"}
    assert [s["id"] for s in section["status"]["seats"]] == ["seat0"]
    # introspect leaves the facts out; its output re-applies as a no-op, and so does query's (facts ignored)
    i = run(lab, op, "introspect", "login1")
    assert i.returncode == 0, i.stderr
    intro = json.loads(i.stdout)["plugins"]["login1"]
    assert "status" not in intro and intro["users"]["labuser"] == {"linger": False}
    for candidate in (intro, section):
        code, out, err = apply(lab, op, candidate)
        assert (code, out["changes"]) == (0, []), err


def test_unknown_user_is_refused_before_anything_changes(lab: Any, op: str) -> None:
    sid = login(lab, "labuser")
    code, out, _ = apply(lab, op, {"users": {"nosuchuser": {"linger": True}},
                                   "sessions": {"absent_for_users": ["labuser", "ghost"]}})
    assert code == 2
    assert {p["path"] for p in out["problems"]} == {"plugins.login1.users.nosuchuser",
                                                    "plugins.login1.sessions.absent_for_users[1]"}
    assert sid in sessions(lab, "labuser")


def test_linger_is_undone_and_termination_records_no_undo(lab: Any, op: str) -> None:
    """The plugin's undo against the real logind: the inverse of a linger change restores it; a termination
    leaves nothing in the undo log (nothing can bring the killed processes back)."""
    sid = login(lab, "eve")
    script = f"""
import asyncio, json
from op_dbus.plugin import Context, UndoLog
from op_dbus.plugins.login1 import Login1Plugin, Login1State

async def main():
    p = Login1Plugin()
    async with Context() as ctx:
        want = Login1State.model_validate({{"users": {{"labuser": {{"linger": True}}}},
                                            "sessions": {{"absent": ["{sid}"]}}}})
        plan = p.diff(want, await p.query(ctx, scope=want))
        undo = UndoLog()
        await p.apply(plan, ctx, undo)
        print(json.dumps([[c.action for c in plan], [c.action for c in undo.entries]]), flush=True)
        await p.apply(list(reversed(undo.entries)), ctx, UndoLog())

asyncio.run(main())
"""
    out = lab.run(["/opt/op-dbus/bin/python", "-c", script]).stdout
    assert json.loads(out) == [["linger", "terminate"], ["unlinger"]]
    assert not linger(lab, "labuser")
    assert sid not in sessions(lab, "eve")
