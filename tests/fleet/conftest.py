"""Fixtures for the collector: a throwaway PostgreSQL 15 cluster (initdb in a temp dir, own port on loopback), a
SQLite database, and host audit logs with real keys."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("sqlalchemy", reason="needs the op-dbus[collector] extra")
pytest.importorskip("starlette", reason="needs the op-dbus[collector] extra")

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class PgCluster:
    url: str
    port: int
    pid: int


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """PostgreSQL 15 from Debian (lab/setup-host.sh installs it), run as the postgres user in a temporary
    directory, listening on its own loopback port and socket directory; stopped by its PID at the end."""
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb); run lab/setup-host.sh")
    if os.geteuid() != 0:
        pytest.skip("the throwaway cluster runs as the postgres user: needs root to switch to it")
    try:
        pg_user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user (install the postgresql package)")
    base = Path(tempfile.mkdtemp(prefix="op-dbus-pg-"))
    os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    data, sockets = base / "data", base / "sock"
    as_pg = {"user": pg_user.pw_uid, "group": pg_user.pw_gid, "extra_groups": [], "cwd": base,
             "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}}
    subprocess.run([PG_BIN / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, **as_pg)  # type: ignore[call-overload]
    sockets.mkdir()
    os.chown(sockets, pg_user.pw_uid, pg_user.pw_gid)
    port = free_port()
    log = open(base / "postgres.log", "wb")  # noqa: SIM115 (kept open for the server's life)
    proc = subprocess.Popen(
        [PG_BIN / "postgres", "-D", data, "-p", str(port), "-k", sockets, "-c", "listen_addresses=127.0.0.1",
         "-c", "max_connections=200", "-c", "fsync=off", "-c", "shared_buffers=64MB"],
        stdout=log, stderr=subprocess.STDOUT, **as_pg)  # type: ignore[call-overload]
    try:
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres",
                                     autocommit=True, connect_timeout=2) as conn:
                    conn.execute("CREATE DATABASE fleet")
                break
            except psycopg.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("PostgreSQL did not start:\n" + (base / "postgres.log").read_text()) from None
                time.sleep(0.2)
        yield PgCluster(f"postgresql://postgres@127.0.0.1:{port}/fleet", port, proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def reset_postgres(url: str) -> None:
    """Drop every collector table so each test starts from an empty database."""
    import psycopg

    with psycopg.connect(url.replace("postgresql://", "postgresql://", 1), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


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
