"""Data-driven cases of the storage plugin's pure diff (tests/cases/storage/*.json: current, desired, expected)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from op_dbus.errors import InvalidInput
from op_dbus.plugins.storage import StoragePlugin, StorageState

CASES = sorted((Path(__file__).parents[2] / "cases" / "storage").glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    case = json.loads(path.read_text())
    if "invalid" in case:
        with pytest.raises(ValidationError, match=case["invalid"]):
            StorageState.model_validate(case["desired"])
        return
    current = StorageState.model_validate(case["current"])
    desired = StorageState.model_validate(case["desired"])
    plugin = StoragePlugin()
    if "error" in case:
        with pytest.raises(InvalidInput, match=case["error"]):
            plugin.diff(desired, current)
        return
    changes = plugin.diff(desired, current)
    assert [f"{c.action} {c.object}" for c in changes] == case["expected"]
    for c in changes:
        assert c.plugin == "storage"
        json.dumps(c.to_record())
    # a format cannot be undone: its change says so, for the log and for a failed apply's report
    assert all(c.after.get("reversible") is False for c in changes if c.action == "format")


def test_cases_exist() -> None:
    assert len(CASES) >= 10
