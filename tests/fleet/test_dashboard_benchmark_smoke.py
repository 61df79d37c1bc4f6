"""benchmarks/dashboard.py --smoke runs end to end (a real collector over SQLite, real HTTP, Chromium if present)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dashboard_benchmark_smoke() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dashboard.py"), "--smoke"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "overview server time" in r.stdout and "first contentful paint" in r.stdout
    assert "GET /v1/hosts" in r.stdout
