"""benchmarks/containers.py runs in its smoke mode (one round) against a real podman service."""

from __future__ import annotations

import pytest

from tests.benchmark_smoke import run_smoke
from tests.containers.conftest import podman_unavailable

REASON = podman_unavailable()


@pytest.mark.skipif(REASON is not None, reason=str(REASON))
def test_containers_benchmark_smoke() -> None:
    out = run_smoke("containers", "--backends", "podman", timeout=900)
    assert "podman" in out
