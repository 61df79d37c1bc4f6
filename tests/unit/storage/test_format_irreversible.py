"""A format cannot be undone: every planned format in the storage cases says so, for the log and a failed apply."""

from __future__ import annotations

from pathlib import Path

import pytest

from op_dbus import secret
from tests.unit.test_diff_cases import CASES_DIR, load_case

FORMATS = [p for p in sorted((CASES_DIR / "storage").glob("*.json")) if "format" in p.read_text()]


@pytest.mark.parametrize("path", FORMATS, ids=[p.stem for p in FORMATS])
def test_a_planned_format_is_marked_irreversible(path: Path, tmp_path: Path) -> None:
    secret.use_key_dir(tmp_path)
    plugin, case = load_case(path)
    if "invalid" in case or "error" in case:
        return
    changes = plugin.diff(plugin.model.model_validate(case["desired"]), plugin.model.model_validate(case["current"]))
    assert all(c.after.get("reversible") is False for c in changes if c.action == "format")


def test_some_cases_plan_a_format() -> None:
    assert FORMATS
