"""benchmarks/collector.py --smoke runs end to end (real collectors over PostgreSQL and SQLite, real HTTP)."""

from __future__ import annotations

from tests.benchmark_smoke import run_smoke


def test_collector_benchmark_smoke() -> None:
    out = run_smoke("collector", timeout=300)
    assert "Ed25519 verify floor" in out and "sqlite" in out and "add-checkpoint sustained" in out
    assert " 0 refused" in out
