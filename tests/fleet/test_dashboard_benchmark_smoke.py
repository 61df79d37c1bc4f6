"""benchmarks/dashboard.py --smoke runs end to end (a real collector over SQLite, real HTTP, Chromium if present)."""

from __future__ import annotations

from tests.benchmark_smoke import run_smoke


def test_dashboard_benchmark_smoke() -> None:
    out = run_smoke("dashboard", timeout=300)
    assert "overview server time" in out and "first contentful paint" in out
    assert "GET /v1/hosts" in out
