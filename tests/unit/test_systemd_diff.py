"""The systemd plugin's diff, case by case from data files: current state, desired state, expected plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from op_dbus.plugins.systemd import SystemdPlugin, SystemdState, UnitState

CASES = sorted((Path(__file__).parent / "cases" / "systemd").glob("*.json"))


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_diff_case(case: Path) -> None:
    data = json.loads(case.read_text())
    current = SystemdState.model_validate(data["current"])
    desired = SystemdState.model_validate(data["desired"])
    plan = [[c.object, c.action] for c in SystemdPlugin().diff(desired, current)]
    assert plan == data["expected"]


def test_cases_exist() -> None:
    assert len(CASES) >= 5


def test_diff_never_touches_undeclared_units() -> None:
    current = SystemdState(units={"a.service": UnitState(active_state="inactive", enabled=False, masked=False),
                                  "b.service": UnitState(active_state="inactive", enabled=False, masked=False)})
    desired = SystemdState(units={"a.service": UnitState(active_state="active")})
    assert {c.object for c in SystemdPlugin().diff(desired, current)} == {"a.service"}


def test_inverse_of_each_change_restores_before() -> None:
    plugin = SystemdPlugin()
    current = SystemdState(units={"a.service": UnitState(active_state="inactive", enabled=False, masked=False)})
    desired = SystemdState(units={"a.service": UnitState(active_state="active", enabled=True)})
    for change in plugin.diff(desired, current):
        inverse = plugin._inverse(change)
        assert inverse.after == change.before and inverse.before == change.after
