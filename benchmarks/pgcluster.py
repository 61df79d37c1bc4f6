"""A throwaway PostgreSQL 15 cluster for tests and benchmarks: initdb in a temporary directory, run as the postgres
user on its own loopback port and socket directory, stopped by its PID."""

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
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")


class Unavailable(Exception):
    """PostgreSQL cannot run here (not installed, not root, no postgres user)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def cluster(max_connections: int = 200) -> Iterator[tuple[str, int]]:
    """Yield (URL of an empty database `fleet`, server PID)."""
    if not (PG_BIN / "initdb").exists():
        raise Unavailable(f"PostgreSQL 15 is not installed ({PG_BIN}/initdb); run lab/setup-host.sh")
    if os.geteuid() != 0:
        raise Unavailable("the throwaway cluster runs as the postgres user: needs root to switch to it")
    try:
        pg_user = pwd.getpwnam("postgres")
    except KeyError:
        raise Unavailable("no postgres user (install the postgresql package)") from None
    base = Path(tempfile.mkdtemp(prefix="op-dbus-pg-"))
    os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    data, sockets = base / "data", base / "sock"
    as_pg = {"user": pg_user.pw_uid, "group": pg_user.pw_gid, "extra_groups": [], "cwd": base,
             "env": {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}}
    proc = None
    log = open(base / "postgres.log", "wb")  # noqa: SIM115 (kept open for the server's life)
    try:
        subprocess.run([PG_BIN / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True, **as_pg)  # type: ignore[call-overload]
        sockets.mkdir()
        os.chown(sockets, pg_user.pw_uid, pg_user.pw_gid)
        port = free_port()
        proc = subprocess.Popen(
            [PG_BIN / "postgres", "-D", data, "-p", str(port), "-k", sockets, "-c", "listen_addresses=127.0.0.1",
             "-c", f"max_connections={max_connections}", "-c", "shared_buffers=64MB"],
            stdout=log, stderr=subprocess.STDOUT, **as_pg)  # type: ignore[call-overload]
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
        yield f"postgresql://postgres@127.0.0.1:{port}/fleet", proc.pid
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def reset(url: str) -> None:
    """Drop every table so the next user starts from an empty database."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
