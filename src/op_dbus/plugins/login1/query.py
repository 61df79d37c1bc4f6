"""Read logind: users, sessions and seats over D-Bus, and the scoped state diff and verify compare."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from op_dbus.backends import dbus
from op_dbus.errors import BackendError, ServiceUnavailable
from op_dbus.plugin import Context

from .model import (
    LOGIN1,
    LOGIN1_PATH,
    MANAGER,
    SEAT,
    SESSION,
    USER,
    Login1State,
    SeatFact,
    SessionFact,
    SessionsState,
    Status,
    UserFact,
    UserState,
)


def _since(usec: int) -> str:
    if not usec:
        return ""
    return datetime.fromtimestamp(usec / 1e6, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def scoped_state(scope: Login1State, users: list[UserFact], sessions: list[SessionFact]) -> Login1State:
    """The live state of what `scope` names, in the form that re-applies: linger of the declared users, and in
    the absent lists the declared ids/users that are absent now. The live facts ride along for diff."""
    by_name = {u.name: u for u in users}
    declared_users = {}
    for name, want in scope.users.items():
        linger = by_name[name].linger if name in by_name else False
        declared_users[name] = UserState.model_construct(linger=linger if want.linger is not None else None)
    state = Login1State.model_construct(users=declared_users, sessions=None, status=None)
    if scope.sessions is not None:
        live_ids = {s.id for s in sessions}
        with_sessions = {s.user for s in sessions}
        remote = any(s.remote for s in sessions)
        want_s = scope.sessions
        state.sessions = SessionsState.model_construct(
            absent=[i for i in want_s.absent if i not in live_ids],
            absent_for_users=[u for u in want_s.absent_for_users if u not in with_sessions],
            absent_remote=(not remote) if want_s.absent_remote is not None else None,
        )
    state._sessions = list(sessions)
    state._users = {u.name: (u.uid, u.linger) for u in users}
    return state


async def read_users(client: dbus.Client) -> list[UserFact]:
    (rows,) = await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "ListUsers")

    async def one(uid: int, name: str, path: str) -> UserFact | None:
        try:
            props = await client.get_all(LOGIN1, path, USER)
        except BackendError:
            return None  # the user logged out between the two calls
        return UserFact(uid=int(uid), name=name, state=props.get("State", ""), linger=bool(props.get("Linger")),
                        sessions=[sid for sid, _ in props.get("Sessions", [])])

    found = await asyncio.gather(*(one(*row) for row in rows))
    return sorted((u for u in found if u is not None), key=lambda u: u.uid)


async def read_sessions(client: dbus.Client) -> list[SessionFact]:
    (rows,) = await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "ListSessions")

    async def one(sid: str, uid: int, user: str, seat: str, path: str) -> SessionFact | None:
        try:
            p = await client.get_all(LOGIN1, path, SESSION)
        except BackendError:
            return None
        return SessionFact(id=sid, user=user, uid=int(uid), seat=seat, class_=p.get("Class", ""),
                           type=p.get("Type", ""), state=p.get("State", ""), remote=bool(p.get("Remote")),
                           remote_host=p.get("RemoteHost", ""), remote_user=p.get("RemoteUser", ""),
                           service=p.get("Service", ""), tty=p.get("TTY", ""), since=_since(p.get("Timestamp", 0)))

    found = await asyncio.gather(*(one(*row) for row in rows))
    return sorted((s for s in found if s is not None), key=lambda s: (len(s.id), s.id))


async def read_seats(client: dbus.Client) -> list[SeatFact]:
    (rows,) = await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "ListSeats")
    seats = []
    for sid, path in rows:
        p = await client.get_all(LOGIN1, path, SEAT)
        active = p.get("ActiveSession", ("", "/"))[0]
        seats.append(SeatFact(id=sid, active_session=active, sessions=[s for s, _ in p.get("Sessions", [])]))
    return seats


async def query(ctx: Context, scope: Login1State | None = None) -> Login1State:
    client = await dbus.system_client(ctx)
    try:
        users, sessions = await asyncio.gather(read_users(client), read_sessions(client))
    except ServiceUnavailable:
        if scope is not None:
            raise
        # no logind on this machine (a minimal container): nothing to write down, and not a failure
        return Login1State.model_construct(users={}, sessions=None, status=None)
    if scope is None:
        state = Login1State.model_construct(
            users={u.name: UserState.model_construct(linger=u.linger) for u in users}, sessions=None, status=None)
        if ctx.settings.read_only_facts:
            state.status = Status.model_construct(seats=await read_seats(client), sessions=sessions, users=users)
        return state
    return scoped_state(scope, users, sessions)
