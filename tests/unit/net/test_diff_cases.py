"""Data-driven cases of the net plugin's pure diff: each JSON file holds current, desired, and the expected plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from op_dbus.errors import InvalidInput
from op_dbus.plugins.net import NetPlugin, NetSection

CASES = sorted((Path(__file__).parent / "cases").glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    case = json.loads(path.read_text())
    plugin = NetPlugin()
    if "invalid" in case:
        # Refused when the file is read, before any state is looked at.
        with pytest.raises(ValidationError, match=case["invalid"]):
            NetSection.model_validate(case["desired"])
        return
    current = NetSection.model_validate(case["current"])
    desired = NetSection.model_validate(case["desired"])
    if "error" in case:
        with pytest.raises(InvalidInput, match=case["error"]):
            plugin.diff(desired, current)
        return
    changes = plugin.diff(desired, current)
    assert [f"{c.action} {c.object}" for c in changes] == case["expected"]
    # Every change can be undone; settings of an interface the same plan creates need no inverse of their own
    # (removing the interface undoes them).
    created = {c.object for c in changes if c.action == "create"}
    created |= {f"interface {c.payload['veth']['peer']}" for c in changes if c.action == "create" and "veth" in c.payload}
    created |= {f"interface {p['name']}" for c in changes if c.action == "create" for p in c.payload.get("ports", [])}
    for c in changes:
        assert c.plugin == "net"
        assert "undo" in c.payload or (c.action == "set" and c.object in created), c.summary()
        json.dumps(c.to_record())


def test_cases_exist() -> None:
    assert len(CASES) >= 15
