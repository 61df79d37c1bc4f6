"""Every benchmark runs in its smoke mode: here the ones that need nothing but this machine (root for a netns).

Benchmarks that need the lab, the container engines or PostgreSQL have their smoke test in that area's tests
(tests/e2e, tests/containers, tests/fleet, tests/net); the last test checks that none is left without one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.benchmark_smoke import BENCHMARKS, run_smoke

TESTS = Path(__file__).resolve().parents[1]
# Scripts in benchmarks/ that are not benchmarks themselves: what a benchmark runs inside the lab, and helpers.
NOT_BENCHMARKS = {"pgcluster", "systemd_inside", "drift_inside"}


def test_ledger_benchmark_smoke() -> None:
    out = run_smoke("ledger")
    assert "audit log benchmark" in out and "load average at the end" in out


def test_audit_benchmark_smoke() -> None:
    out = run_smoke("audit")
    assert "verify --full over 100 blocks" in out


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark creates a network namespace (needs root)")
def test_transaction_benchmark_smoke() -> None:
    out = run_smoke("transaction")
    assert "1 interleaved rounds" in out and "rollback of 100 changes" in out


def test_every_benchmark_has_a_smoke_mode_and_a_test_that_runs_it() -> None:
    names = {p.stem for p in BENCHMARKS.glob("*.py")} - NOT_BENCHMARKS
    sources = "\n".join(p.read_text() for p in TESTS.rglob("*.py"))
    tested = set(re.findall(r'run_smoke\(\s*"(\w+)"', sources))
    assert names - tested == set(), "benchmarks without a smoke test"
    for name in names:
        assert "--smoke" in (BENCHMARKS / f"{name}.py").read_text(), f"benchmarks/{name}.py has no --smoke"
