"""Data-driven cases of the networkmanager plugin's pure diff (tests/cases/networkmanager/*.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from op_dbus import secret
from op_dbus.plugins.networkmanager import NetworkManagerPlugin, NetworkManagerSection

CASES = sorted((Path(__file__).parents[2] / "cases" / "networkmanager").glob("*.json"))


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path, tmp_path: Path) -> None:
    secret.use_key_dir(tmp_path)
    case = json.loads(path.read_text())
    if "invalid" in case:
        with pytest.raises(ValidationError, match=case["invalid"]):
            NetworkManagerSection.model_validate(case["desired"])
        return
    changes = NetworkManagerPlugin().diff(NetworkManagerSection.model_validate(case["desired"]),
                                          NetworkManagerSection.model_validate(case["current"]))
    assert [f"{c.action} {c.object}" for c in changes] == case["expected"]
    for c in changes:
        record = json.dumps(c.to_record())  # what the log keeps: JSON, and no clear secret in it
        assert "passphrase" not in record


def test_cases_exist() -> None:
    assert len(CASES) >= 5
