"""benchmarks/net.py runs end to end in its smoke mode (one round, tiny sizes): its numbers are not checked here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "net.py"


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark creates network namespaces (needs root)")
def test_net_benchmark_smoke() -> None:
    res = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    assert "100 address adds: plugin apply vs `ip -batch`" in res.stdout
    sweep = res.stdout[res.stdout.index("scale sweep"):]
    for kind in ("addresses", "routes", "veth pairs"):
        assert f"  {kind:<11}     10 " in sweep
