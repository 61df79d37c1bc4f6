"""The lab benchmarks run in their smoke mode (one round): each boots its own lab system, as a user's run does."""

from __future__ import annotations

import pytest

from tests.benchmark_smoke import run_smoke
from tests.conftest import lab_unavailable

pytestmark = pytest.mark.skipif(lab_unavailable() is not None, reason=str(lab_unavailable()))


def test_systemd_ops_benchmark_smoke() -> None:
    out = run_smoke("systemd_ops", timeout=1200)
    assert "1 interleaved rounds inside the lab system" in out and "read the state of 50 units" in out


def test_discover_benchmark_smoke() -> None:
    out = run_smoke("discover", timeout=1200)
    assert "busctl" in out


def test_drift_benchmark_smoke() -> None:
    out = run_smoke("drift", timeout=1200)
    assert out.strip()


def test_converge_benchmark_smoke() -> None:
    out = run_smoke("converge", timeout=1200)
    assert "op-dbus apply" in out
