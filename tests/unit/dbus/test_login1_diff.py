"""The login1 plugin without logind: the plans of the data cases (tests/cases/login1) converge, the model's
declarable/read-only split, and honesty about what cannot be undone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from op_dbus.plugin import Section
from op_dbus.plugins.login1 import Login1Plugin, Login1State, SessionFact, UserFact, scoped_state
from op_dbus.state import validate_document

CASES = sorted((Path(__file__).parents[2] / "cases" / "login1").glob("*.json"))


def live(data: dict[str, Any]) -> tuple[list[UserFact], list[SessionFact]]:
    """The live facts a case's current state reports under `status`."""
    status = data["current"]["status"]
    return [UserFact(**u) for u in status["users"]], [SessionFact(**s) for s in status["sessions"]]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_converged_snapshot_re_applies_as_a_no_op(case: Path) -> None:
    """Simulate the plan's effect on the live facts: then nothing is left to do, and the snapshot the log
    keeps (the scoped dump) is itself a state file that plans nothing."""
    data = json.loads(case.read_text())
    plugin = Login1Plugin()
    desired = Login1State.model_validate(data["desired"])
    users, sessions = live(data)
    plan = plugin.diff(desired, scoped_state(desired, users, sessions))
    gone = {sid for c in plan if c.action == "terminate" for sid in c.payload["ids"]}
    lingers = {c.payload["user"]: c.payload["linger"] for c in plan if c.action in ("linger", "unlinger")}
    users = [u.model_copy(update={"linger": lingers.get(u.name, u.linger)}) for u in users]
    sessions = [s for s in sessions if s.id not in gone]
    after = scoped_state(desired, users, sessions)
    assert plugin.diff(desired, after) == []
    snapshot = Login1State.model_validate(plugin.dump(after))
    assert plugin.diff(snapshot, scoped_state(snapshot, users, sessions)) == []
    assert plugin.dump(scoped_state(snapshot, users, sessions)) == plugin.dump(after)


def test_terminations_are_irreversible_and_come_last() -> None:
    desired = Login1State.model_validate({"users": {"mallory": {"linger": True}},
                                          "sessions": {"absent_for_users": ["mallory"]}})
    users = [UserFact(uid=1001, name="mallory", state="active", linger=False)]
    current = scoped_state(desired, users, [SessionFact(id="2", user="mallory", uid=1001)])
    plan = Login1Plugin().diff(desired, current)
    assert [c.action for c in plan] == ["linger", "terminate"]
    assert plan[-1].after == {"sessions": [], "reversible": False}


def test_status_is_accepted_and_ignored() -> None:
    """`op-dbus query` output (with read-only status) validates as a state file and plans nothing by itself."""
    query_output = {"users": {"labuser": {"linger": False}}, "status": {
        "seats": [{"id": "seat0", "active_session": "", "sessions": []}],
        "sessions": [{"id": "1", "user": "labuser", "uid": 1000, "class": "user", "state": "active", "since": "x"}],
        "users": [{"uid": 1000, "name": "labuser", "state": "active", "linger": False, "sessions": ["1"]}]}}
    desired = Login1State.model_validate(query_output)
    users = [UserFact(uid=1000, name="labuser", state="active", linger=False)]
    assert Login1Plugin().diff(desired, scoped_state(desired, users, [])) == []
    assert desired.status is not None and desired.status.sessions[0].class_ == "user"
    assert Login1Plugin().dump(desired)["status"]["sessions"][0]["class"] == "user"


@pytest.mark.parametrize(("section", "path"), [
    ({"users": {"labuser": {"linger": "yes"}}}, 'plugins.login1.users.labuser.linger'),
    ({"users": {"bad user!": {}}}, 'plugins.login1.users["bad user!"]'),
    ({"sessions": {"absent": [3]}}, "plugins.login1.sessions.absent[0]"),
    ({"sessions": {"gone": []}}, "plugins.login1.sessions.gone"),
])  # fmt: skip
def test_invalid_sections_name_the_path(section: dict[str, Any], path: str) -> None:
    from op_dbus.errors import StateFileError

    with pytest.raises(StateFileError) as info:
        validate_document({"version": 1, "plugins": {"login1": section}}, "t.json")
    assert path in [p.path for p in info.value.problems], info.value.problems


def test_models_are_sections() -> None:
    assert issubclass(Login1State, Section)
