"""benchmarks/nm.py runs end to end in the lab in its smoke mode (N = 3, one round); timings are not checked."""

from __future__ import annotations

from typing import Any

from tests.benchmark_smoke import run_smoke


def test_nm_benchmark_smoke(lab_assets: Any) -> None:
    out = run_smoke("nm")
    assert "N = 3" in out
    for step in ("apply", "query"):
        assert any(line.split()[:1] == [step] and line.endswith("x") for line in out.splitlines()), out
