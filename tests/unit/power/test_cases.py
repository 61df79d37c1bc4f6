"""Data-driven cases of the power plugin's pure diff (tests/cases/power/*.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from op_dbus.plugins.power import PowerPlugin, PowerSection

CASES = sorted((Path(__file__).parents[2] / "cases" / "power").glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    case = json.loads(path.read_text())
    if "invalid" in case:
        with pytest.raises(ValidationError, match=case["invalid"]):
            PowerSection.model_validate(case["desired"])
        return
    changes = PowerPlugin().diff(PowerSection.model_validate(case["desired"]),
                                 PowerSection.model_validate(case["current"]))
    assert [f"{c.action} {c.object}" for c in changes] == case["expected"]
    for c in changes:  # what the audit log records must be JSON
        json.dumps(c.to_record())


def test_cases_exist() -> None:
    assert len(CASES) >= 3
