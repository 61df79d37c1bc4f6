"""Fixtures for the audit log tests: a fresh log in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from op_dbus.ledger import Ledger


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def ledger(state_dir: Path) -> Iterator[Ledger]:
    with Ledger.open(state_dir) as log:
        yield log
