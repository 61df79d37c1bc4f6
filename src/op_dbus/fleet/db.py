"""The collector's database: one SQLAlchemy Core schema over SQLite (default) and PostgreSQL, with versioned migrations.

Migrations are a numbered list of functions in this module, recorded in `schema_version` and applied in one
transaction under a lock (PostgreSQL: an advisory lock, so several collectors starting at once migrate once;
SQLite: BEGIN IMMEDIATE). Not Alembic: its environment (env.py, a script directory, its own config) has to ship
and be found at run time, and autogenerate is of no use for a schema this small; a list of functions is
reviewed and tested like any code, and runs the same on both engines.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError

from op_dbus import files
from op_dbus.errors import InvalidInput

DEFAULT_DB = "sqlite:////var/lib/op-dbus-collector/fleet.db"

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied", Float, nullable=False),
)

settings = Table(
    "settings", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# One row per enrolled host: its log's origin and the verifier key its checkpoints must be signed with.
hosts = Table(
    "hosts", metadata,
    Column("name", String(255), primary_key=True),
    Column("origin", String(1024), nullable=False, unique=True),
    Column("vkey", Text, nullable=False),
    Column("enrolled", Float, nullable=False),
    Column("revoked", Float, nullable=True),
)

# The witness's record per log: the latest cosigned (size, root) and the checkpoint that carried it.
witness_state = Table(
    "witness_state", metadata,
    Column("origin", String(1024), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("root", LargeBinary(32), nullable=True),
    Column("checkpoint", Text, nullable=True),
    Column("updated", Float, nullable=False),
)

# Signed checkpoints that contradict what the witness holds: kept whole, both sides, for anyone to check.
evidence = Table(
    "evidence", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("origin", String(1024), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("stored", Text, nullable=True),
    Column("submitted", Text, nullable=False),
    Column("proof", Text, nullable=True),
    Column("detail", Text, nullable=False),
    Column("time", Float, nullable=False),
)

alerts = Table(
    "alerts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("detail", Text, nullable=False),
    Column("time", Float, nullable=False),
    Column("cleared", Float, nullable=True),
    Index("alerts_open", "cleared", "host"),
)


# One-time enrollment tokens: only SHA-256 of the token is kept (it is 256 random bits: no dictionary to resist).
tokens = Table(
    "tokens", metadata,
    Column("hash", LargeBinary(32), primary_key=True),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("used", Float, nullable=True),
    Column("used_by", String(255), nullable=True),
)


# Signed footprints as received (the host's signed note, whole), newest last per host.
footprints = Table(
    "footprints", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("host", String(255), nullable=False),
    Column("received", Float, nullable=False),
    Column("note", Text, nullable=False),
    Index("footprints_by_host", "host", "id"),
)

# API tokens for the read (viewer) and control (operator) endpoints; only SHA-256 of each is kept.
api_tokens = Table(
    "api_tokens", metadata,
    Column("hash", LargeBinary(32), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("label", String(255), nullable=False),
    Column("created", Float, nullable=False),
)


# Staged rollouts of a commit: waves of host names, how many are open, and whether it runs, halted or is done.
rollouts = Table(
    "rollouts", metadata,
    Column("commit", String(64), primary_key=True),
    Column("waves", Text, nullable=False),  # JSON: [[host, ...], ...]
    Column("opened", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("reason", Text, nullable=True),
    Column("created", Float, nullable=False),
    Column("updated", Float, nullable=False),
)


# Dashboard users: scrypt hashes of their passwords (salt and parameters in the stored string), and their role.
users = Table(
    "users", metadata,
    Column("name", String(255), primary_key=True),
    Column("role", String(16), nullable=False),
    Column("password", Text, nullable=False),
    Column("created", Float, nullable=False),
)

# Dashboard sessions, server-side: only SHA-256 of the cookie's value is kept, with its CSRF token and expiry.
sessions = Table(
    "sessions", metadata,
    Column("hash", LargeBinary(32), primary_key=True),
    Column("user", String(255), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created", Float, nullable=False),
    Column("expires", Float, nullable=False),
)

# Failed logins, by user name and by client address, for rate limiting (pruned as they age).
login_failures = Table(
    "login_failures", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(300), nullable=False),
    Column("time", Float, nullable=False),
    Index("login_failures_by_key", "key", "time"),
)

# The latest footprint of each host, in columns, so the overview filters, sorts and pages in SQL at fleet scale.
host_summary = Table(
    "host_summary", metadata,
    Column("host", String(255), primary_key=True),
    Column("received", Float, nullable=False),
    Column("mode", String(32), nullable=True),
    Column("commit", String(64), nullable=True),
    Column("drift", Integer, nullable=False),
    Column("drift_since", Float, nullable=True),
    Column("last_result", String(32), nullable=True),
    Column("head_index", BigInteger, nullable=True),
    Column("version", String(64), nullable=True),
    Index("host_summary_received", "received"),
)


# Named groups of hosts (a host may be in several), for the dashboard's filter.
host_groups = Table(
    "host_groups", metadata,
    Column("grp", String(255), primary_key=True),
    Column("host", String(255), primary_key=True),
    Index("host_groups_by_host", "host"),
)


def _migration_1(conn: Connection) -> None:
    metadata.create_all(conn, tables=[settings, hosts, witness_state, evidence, alerts])


def _migration_2(conn: Connection) -> None:
    metadata.create_all(conn, tables=[tokens])


def _migration_3(conn: Connection) -> None:
    metadata.create_all(conn, tables=[footprints, api_tokens])


def _migration_4(conn: Connection) -> None:
    metadata.create_all(conn, tables=[rollouts])


def _migration_5(conn: Connection) -> None:
    metadata.create_all(conn, tables=[users, sessions, login_failures, host_summary, host_groups])
    # Summaries of the footprints received before this version: the latest of each host.
    import json

    from op_dbus.ledger import note

    latest = select(footprints.c.host, func.max(footprints.c.id).label("id")).group_by(footprints.c.host).subquery()
    for row in conn.execute(select(footprints).join(latest, latest.c.id == footprints.c.id)):
        doc = json.loads(note.parse(row.note).text.split("\n")[2])
        conn.execute(host_summary.insert().values(summary_values(row.host, doc, row.received, None)))


def summary_values(host: str, doc: dict[str, Any], received: float, drift_since: float | None) -> dict[str, Any]:
    """The host_summary row for a footprint `doc` (drift_since: when the drift now reported began, if known)."""
    last = doc.get("last_apply") or {}
    head = doc.get("head") or {}
    drift = int(doc.get("drift", 0) or 0)
    return {"host": host, "received": received, "mode": _short(doc.get("mode"), 32), "commit": _short(doc.get("commit"), 64),
            "drift": drift, "drift_since": (drift_since or received) if drift > 0 else None,
            "last_result": _short(last.get("result"), 32),
            "head_index": head.get("index") if isinstance(head.get("index"), int) else None,
            "version": _short(doc.get("version"), 64)}


def _short(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5]
SCHEMA_VERSION = len(MIGRATIONS)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")  # a cosignature handed out must survive a power cut
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _prepare_sqlite_file(path: Path) -> None:
    """The database directory must be ours (0700 when we create it); the file is created 0600."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    files.check_directory(path.parent, "collector database directory")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise InvalidInput(f"cannot open the collector database {path}: {exc.strerror}") from None
    try:
        files.check_file(os.fstat(fd), path, "collector database", secret=True)
    finally:
        os.close(fd)


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for `sqlite:///PATH` or `postgresql://...` (driven by psycopg 3)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidInput(f"--db {url!r} is not a database URL (sqlite:////path/fleet.db or postgresql://...)") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise InvalidInput("--db: a SQLite collector database needs a file path (sqlite:////path/fleet.db)")
        _prepare_sqlite_file(Path(parsed.database))
        engine = create_engine(parsed.set(drivername="sqlite+pysqlite"), pool_size=pool_size, max_overflow=0)
        event.listen(engine, "connect", _sqlite_pragmas)

        # pysqlite opens transactions lazily and never for reads; we issue BEGIN ourselves. A transaction that
        # writes takes the write lock at once (BEGIN IMMEDIATE) unless it was opened with write=False, so a
        # read-check-write sequence cannot interleave with another process's.
        @event.listens_for(engine, "connect")
        def _no_pysqlite_tx(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            write = conn.get_execution_options().get("write", True)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if backend == "postgresql":
        return create_engine(parsed.set(drivername="postgresql+psycopg"), pool_size=pool_size, max_overflow=pool_size,
                             pool_pre_ping=True)
    raise InvalidInput(f"--db: unsupported database {backend!r}; use sqlite:////path/fleet.db or postgresql://...")


def migrate(engine: Engine) -> int:
    """Bring the schema to SCHEMA_VERSION; return the version it was at. Refuses a newer schema."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7250153)"))
        schema_version.create(conn, checkfirst=True)
        current = conn.execute(select(schema_version.c.version).order_by(schema_version.c.version.desc())).scalar()
        current = int(current or 0)
        if current > SCHEMA_VERSION:
            raise InvalidInput(f"the collector database has schema {current}, newer than this op-dbus ({SCHEMA_VERSION})",
                               hint="upgrade op-dbus on this collector")
        for version in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](conn)
            conn.execute(schema_version.insert().values(version=version, applied=time.time()))
    return current


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (on SQLite: no write lock)."""
    with engine.connect() as conn:
        conn.execution_options(write=False)
        with conn.begin():
            yield conn


def get_setting(engine: Engine, name: str) -> str | None:
    with engine.connect() as conn:
        value = conn.execute(select(settings.c.value).where(settings.c.name == name)).scalar()
    return None if value is None else str(value)


def set_setting_once(engine: Engine, name: str, value: str) -> str:
    """Store `value` unless a value is already there; return the stored one (first writer wins)."""
    try:
        with engine.begin() as conn:
            current = conn.execute(select(settings.c.value).where(settings.c.name == name)).scalar()
            if current is not None:
                return str(current)
            conn.execute(settings.insert().values(name=name, value=value))
    except IntegrityError:
        # Another collector process stored it first (PostgreSQL): theirs stands.
        stored = get_setting(engine, name)
        if stored is None:
            raise
        return stored
    return value
