"""benchmarks/converge.py runs end to end in the lab in its smoke mode (N = 3, one round); timings are not checked."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "converge.py"


def test_converge_benchmark_smoke(lab: Any) -> None:
    spec = importlib.util.spec_from_file_location("converge_bench", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = bench.run_in(lab, [3], 1)
    medians = results["3"]
    for tool in ("op-dbus apply", "systemctl (one call)", "shell loop"):
        assert medians[f"{tool}:converge"] > 0 and medians[f"{tool}:no-op"] > 0
    assert "op-dbus apply" in bench.report(results, 1)
