"""benchmarks/collector.py --smoke runs end to end (real collectors over PostgreSQL and SQLite, real HTTP)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_collector_benchmark_smoke() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "collector.py"), "--smoke"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Ed25519 verify floor" in r.stdout and "sqlite" in r.stdout and "add-checkpoint sustained" in r.stdout
    assert " 0 refused" in r.stdout
