"""Every net plan from the data cases (tests/cases/net) can be undone step by step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from op_dbus.plugins.net import NetPlugin, NetSection

CASES = [p for p in sorted((Path(__file__).parents[2] / "cases" / "net").glob("*.json"))
         if not {"invalid", "error"} & set(json.loads(p.read_text()))]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_every_change_has_an_inverse(path: Path) -> None:
    case = json.loads(path.read_text())
    changes = NetPlugin().diff(NetSection.model_validate(case["desired"]), NetSection.model_validate(case["current"]))
    # Settings of an interface the same plan creates need no inverse of their own (removing the interface
    # undoes them).
    created = {c.object for c in changes if c.action == "create"}
    created |= {f"interface {c.payload['veth']['peer']}" for c in changes if c.action == "create" and "veth" in c.payload}
    created |= {f"interface {p['name']}" for c in changes if c.action == "create" for p in c.payload.get("ports", [])}
    for c in changes:
        assert "undo" in c.payload or (c.action == "set" and c.object in created), c.summary()


def test_cases_exist() -> None:
    assert len(CASES) >= 15
