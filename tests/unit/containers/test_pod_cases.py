"""Data-driven cases of the containers plugin's pure diff for pods (tests/cases/containers/pod-*.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from op_dbus.plugins.containers import ContainersPlugin, ContainersState

CASES = sorted((Path(__file__).parents[2] / "cases" / "containers").glob("pod-*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    case = json.loads(path.read_text())
    if "invalid" in case:
        with pytest.raises(ValidationError, match=case["invalid"]):
            ContainersState.model_validate(case["desired"])
        return
    current = ContainersState.model_validate(case["current"])
    desired = ContainersState.model_validate(case["desired"])
    changes = ContainersPlugin().diff(desired, current)
    assert [f"{c.action} {c.object}" for c in changes] == case["expected"]
    for c in changes:
        json.dumps(c.to_record())


def test_cases_exist() -> None:
    assert len(CASES) >= 6
