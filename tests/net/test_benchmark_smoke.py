"""benchmarks/net.py runs end to end in its smoke mode (one round, tiny sizes): its numbers are not checked here."""

from __future__ import annotations

import os

import pytest

from tests.benchmark_smoke import run_smoke


@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark creates network namespaces (needs root)")
def test_net_benchmark_smoke() -> None:
    out = run_smoke("net", timeout=600)
    assert "100 address adds: plugin apply vs `ip -batch`" in out
    sweep = out[out.index("scale sweep"):]
    for kind in ("addresses", "routes", "veth pairs"):
        assert f"  {kind:<11}     10 " in sweep
