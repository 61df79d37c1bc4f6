"""benchmarks/storage.py runs end to end in its smoke mode (one round): its numbers are not checked here."""

from __future__ import annotations

from typing import Any

from tests.benchmark_smoke import run_smoke


def test_storage_benchmark_smoke(lab_assets: Any) -> None:
    out = run_smoke("storage")
    assert "op-dbus apply" in out and "udisksctl" in out
    for what in ("mount", "unmount"):
        assert any(line.startswith(what) and line.endswith("x") for line in out.splitlines()), out
