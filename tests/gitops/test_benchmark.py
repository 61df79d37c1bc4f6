"""benchmarks/gitops.py --smoke runs end to end (one round, tiny sizes) and prints every measurement."""

from __future__ import annotations

from tests.benchmark_smoke import run_smoke


def test_gitops_benchmark_smoke() -> None:
    out = run_smoke("gitops", timeout=600)
    for line in ("--git-interval 1 ", "SIGHUP on push", "op-dbus poll", "git fetch (ordinary clone)",
                 "op-dbus check ", "x the floor"):
        assert line in out, out
