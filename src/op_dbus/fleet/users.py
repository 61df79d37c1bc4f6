"""Dashboard users (scrypt password hashes), server-side sessions with CSRF tokens, and login rate limiting."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import Engine, delete, func, select, update

from op_dbus.errors import InvalidInput
from op_dbus.fleet import db
from op_dbus.fleet.fleetview import ROLES

# scrypt (RFC 7914) from the standard library: memory-hard like argon2id, and no extra dependency on the
# collector. N=2^15, r=8 takes 32 MiB and tens of milliseconds per guess here.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
SESSION_LIFETIME = 8 * 3600.0  # seconds; a new login is needed after this
LOGIN_WINDOW = 900.0  # seconds over which failed logins are counted
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_CLIENT = 20
MIN_PASSWORD = 10
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * 1024 * 1024, dklen=32)


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$SALT$HASH` (base64), so the parameters can grow without breaking stored hashes."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def check_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


# A hash checked when the user does not exist, so an unknown name takes as long as a wrong password.
_DECOY = hash_password(secrets.token_hex(16))


class RateLimited(Exception):
    pass


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf: str
    expires: float


def _sha(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class Users:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, name: str, role: str, password: str) -> None:
        """Create user `name`, or replace the role and password of an existing one."""
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"user name {name!r}: letters, digits and . _ @ - (up to 64, starting with a letter "
                               "or digit)")
        if role not in ROLES:
            raise InvalidInput(f"--role {role!r}: one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise InvalidInput(f"the password must have at least {MIN_PASSWORD} characters")
        stored = hash_password(password)
        with self.engine.begin() as conn:
            if conn.execute(select(db.users.c.name).where(db.users.c.name == name)).first() is None:
                conn.execute(db.users.insert().values(name=name, role=role, password=stored, created=time.time()))
            else:
                conn.execute(update(db.users).where(db.users.c.name == name).values(role=role, password=stored))
                conn.execute(delete(db.sessions).where(db.sessions.c.user == name))  # old sessions end

    def remove(self, name: str) -> bool:
        with self.engine.begin() as conn:
            conn.execute(delete(db.sessions).where(db.sessions.c.user == name))
            return bool(conn.execute(delete(db.users).where(db.users.c.name == name)).rowcount)

    def login(self, name: str, password: str, client: str) -> tuple[str, Session]:
        """A new session (cookie value, session) for valid credentials; PermissionError when they are not;
        RateLimited when this user or client failed too often lately (checked before the password)."""
        now = time.time()
        keys = [f"user:{name[:255]}", f"client:{client}"]
        f = db.login_failures
        with self.engine.begin() as conn:
            conn.execute(delete(f).where(f.c.time < now - LOGIN_WINDOW))
            counts = {k: int(conn.execute(select(func.count()).where(f.c.key == k)).scalar() or 0) for k in keys}
            if counts[keys[0]] >= MAX_FAILURES_PER_USER or counts[keys[1]] >= MAX_FAILURES_PER_CLIENT:
                raise RateLimited
            row = conn.execute(select(db.users).where(db.users.c.name == name)).first()
        ok = check_password(password, row.password if row is not None else _DECOY) and row is not None
        if not ok:
            with self.engine.begin() as conn:
                conn.execute(f.insert(), [{"key": k, "time": now} for k in keys])
            raise PermissionError("unknown user or wrong password")
        assert row is not None  # ok is False without a row
        with self.engine.begin() as conn:
            conn.execute(delete(f).where(f.c.key == keys[0]))
            conn.execute(delete(db.sessions).where(db.sessions.c.expires < now))
            cookie = secrets.token_urlsafe(32)
            session = Session(row.name, row.role, secrets.token_urlsafe(32), now + SESSION_LIFETIME)
            conn.execute(db.sessions.insert().values(hash=_sha(cookie), user=session.user, csrf=session.csrf,
                                                     created=now, expires=session.expires))
        return cookie, session

    def session(self, cookie: str) -> Session | None:
        """The live session of a cookie value (its role read from the user, so a changed role applies at once)."""
        s, u = db.sessions, db.users
        with db.reading(self.engine) as conn:
            row = conn.execute(select(s.c.user, s.c.csrf, s.c.expires, u.c.role)
                               .join(u, u.c.name == s.c.user).where(s.c.hash == _sha(cookie))).first()
        if row is None or row.expires < time.time():
            return None
        return Session(row.user, row.role, row.csrf, row.expires)

    def logout(self, cookie: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(db.sessions).where(db.sessions.c.hash == _sha(cookie)))
