"""The one way the suite runs a benchmark: `python benchmarks/<name>.py --smoke` (one round, tiny sizes, seconds).

A benchmark that no longer runs fails its smoke test; its numbers are not judged here. Each benchmark's smoke test
lives with the tests of the area it needs (a network namespace, the lab, the container engines) and calls
`run_smoke`; tests/unit/test_benchmarks_smoke.py checks that every benchmark has one.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def run_smoke(name: str, *args: str, timeout: float = 900) -> str:
    """Run benchmarks/<name>.py --smoke and return its output; fail with its output when it does not succeed."""
    res = subprocess.run([sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", *args], capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT, check=False)
    assert res.returncode == 0, f"benchmarks/{name}.py --smoke failed:\n{res.stdout[-3000:]}\n{res.stderr[-5000:]}"
    return res.stdout
