"""Fixtures for the collector: a throwaway PostgreSQL 15 cluster (initdb in a temp dir, own port on loopback), a
SQLite database, and host audit logs with real keys."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="needs the op-dbus[collector] extra")
pytest.importorskip("starlette", reason="needs the op-dbus[collector] extra")

from benchmarks import pgcluster
from benchmarks.pgcluster import free_port

__all__ = ["PgCluster", "free_port", "reset_postgres", "running"]


@dataclass(frozen=True)
class PgCluster:
    url: str
    pid: int


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """PostgreSQL 15 from Debian (lab/setup-host.sh installs it), run as the postgres user in a temporary
    directory, listening on its own loopback port and socket directory; stopped by its PID at the end."""
    try:
        with pgcluster.cluster() as (url, pid):
            yield PgCluster(url, pid)
    except pgcluster.Unavailable as exc:
        pytest.skip(str(exc))


reset_postgres = pgcluster.reset


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        d = tmp_path / "collector"
        d.mkdir(mode=0o700)
        return f"sqlite:///{d}/fleet.db"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    reset_postgres(cluster.url)
    return cluster.url


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    d = tmp_path / "witness"
    d.mkdir(mode=0o700)
    return d


@contextlib.contextmanager
def running(proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
