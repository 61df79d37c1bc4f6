"""benchmarks/gitops.py --smoke runs end to end (one round, tiny sizes) and prints every measurement."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gitops_benchmark_smoke() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/gitops.py"), "--smoke"], capture_output=True,
                       text=True, timeout=600, check=False, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    for line in ("--git-interval 1 ", "SIGHUP on push", "op-dbus poll", "git fetch (ordinary clone)",
                 "op-dbus check ", "x the floor"):
        assert line in r.stdout, r.stdout
