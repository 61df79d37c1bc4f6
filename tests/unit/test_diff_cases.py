"""Every plugin's pure diff, case by case from data: tests/cases/<plugin>/<case>.json.

A case holds `description`, `current` and `desired` (sections as a state file writes them) and `expected`, the
plan as "<action> <object>" lines in order. Optional keys: `changes` (per change, the `before`, `after` and a
subset of the `payload` it must carry), `invalid` (the desired section is refused when read, the message
matching) and `error` (diff refuses the pair with InvalidInput, the message matching). The plugin is the
folder's name, loaded through the plugin registry, so a new plugin's cases need no Python.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from op_dbus import secret
from op_dbus.errors import InvalidInput
from op_dbus.plugin import Plugin, load_plugins

CASES_DIR = Path(__file__).parents[1] / "cases"
CASES = sorted(CASES_DIR.glob("*/*.json"))
CASE_KEYS = {"description", "current", "desired", "expected", "changes", "invalid", "error"}


def load_case(path: Path) -> tuple[Plugin[Any], dict[str, Any]]:
    plugin = load_plugins([path.parent.name])[path.parent.name]
    case = json.loads(path.read_text())
    unknown = set(case) - CASE_KEYS
    assert not unknown, f"{path}: unknown keys {sorted(unknown)}"
    return plugin, case


def secret_values(value: Any) -> list[str]:
    """Every clear value a section marks secret (`{"secret": "..."}`): none may reach what the log records."""
    if isinstance(value, dict):
        found = [value["secret"]] if isinstance(value.get("secret"), str) else []
        return found + [v for item in value.values() for v in secret_values(item)]
    if isinstance(value, list):
        return [v for item in value for v in secret_values(item)]
    return []


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_case(path: Path, tmp_path: Path) -> None:
    secret.use_key_dir(tmp_path)  # secrets are recorded as HMACs under a per-host key
    plugin, case = load_case(path)
    assert case.get("description"), f"{path}: a case says what it shows"
    if "invalid" in case:
        with pytest.raises(ValidationError, match=case["invalid"]):
            plugin.model.model_validate(case["desired"])
        return
    current = plugin.model.model_validate(case["current"])
    desired = plugin.model.model_validate(case["desired"])
    if "error" in case:
        with pytest.raises(InvalidInput, match=case["error"]):
            plugin.diff(desired, current)
        return
    changes = plugin.diff(desired, current)
    assert [f"{c.action} {c.object}" for c in changes] == case["expected"]
    for change, want in zip(changes, case.get("changes", []), strict=False):
        if "before" in want:
            assert change.before == want["before"], change.summary()
        if "after" in want:
            assert change.after == want["after"], change.summary()
        payload = want.get("payload", {})
        assert {k: change.payload.get(k) for k in payload} == payload, change.summary()
    hidden = secret_values(case["desired"])
    for c in changes:
        assert c.plugin == plugin.name
        record = json.dumps(c.to_record())  # what the log records is JSON, with no clear secret in it
        assert not [v for v in hidden if v in record], c.summary()


def test_every_plugin_with_a_diff_has_cases() -> None:
    folders = {p.name for p in CASES_DIR.iterdir() if p.is_dir()}
    assert {"net", "systemd", "login1", "dbus", "containers"} <= folders
    for folder in folders:
        assert list((CASES_DIR / folder).glob("*.json")), folder
