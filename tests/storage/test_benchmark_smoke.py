"""benchmarks/storage.py runs end to end in its smoke mode (one round): its numbers are not checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "storage.py"


def test_storage_benchmark_smoke(lab_assets: Any) -> None:
    res = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "op-dbus apply" in res.stdout and "udisksctl" in res.stdout
    for what in ("mount", "unmount"):
        assert any(line.startswith(what) and line.endswith("x") for line in res.stdout.splitlines()), res.stdout
