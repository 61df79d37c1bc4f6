"""benchmarks/nm.py runs end to end in the lab in its smoke mode (N = 3, one round); timings are not checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "nm.py"


def test_nm_benchmark_smoke(lab_assets: Any) -> None:
    res = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "N = 3" in res.stdout
    for step in ("apply", "query"):
        assert any(line.split()[:1] == [step] and line.endswith("x") for line in res.stdout.splitlines()), res.stdout
