"""The `login1` plugin: logind over org.freedesktop.login1, which users linger, which sessions must not exist.

State section::

    {"users": {"labuser": {"linger": true}, "backup": {"linger": false}},
     "sessions": {"absent_for_users": ["mallory"], "absent": ["42"], "absent_remote": false}}

Declarable: a user's `linger` (their user manager runs without a login, `SetUserLinger`), and sessions that
must not exist: every session of the users in `absent_for_users`, the sessions with the ids in `absent`, and
with `absent_remote: true` every remote session (ssh and the like). Users are named by login name.

Terminating is not reversible: a session's processes are killed and nothing can bring them back, so a
termination records no undo step, its change says `"reversible": false`, and within this plugin it runs after
every reversible change. A user in `absent_for_users` whose user manager does not linger is ended whole
(`TerminateUser`: sessions and every process of the user); one that lingers keeps its user manager and loses
its sessions (`TerminateSession`).

Read-only facts (seats; sessions with user, seat, class, state, remote host and start time; users with uid,
state and linger) are reported under `status` by `op-dbus query` only. `status` is output, never input: a
state file may carry it (so a query's output is a valid state file) and it is ignored. `op-dbus introspect`
leaves it out and writes each known user's `linger`, which re-applies as a no-op.

Watching (the agent): logind's SessionNew/SessionRemoved/UserNew/UserRemoved signals, each mapped to the declared
user names and session ids it touches. logind sends no PropertiesChanged for `Linger` (systemd 252 checked):
`SetUserLinger` only shows on the bus as UserNew/UserRemoved when it starts or stops the user's manager, which it
does not for a user that is logged in. So when op-dbus runs on the machine it manages (the standard system bus),
the linger flag files in /var/lib/systemd/linger/ are watched with inotify as well; against another machine's bus
a linger change of a logged-in user is found by the periodic reconciliation. As root, a bus monitor notes who
called logind (loginctl, pam_systemd's CreateSession) to name them as the origin of the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import pwd
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from op_dbus.backends import dbus, inotify
from op_dbus.errors import ApplyFailed, BackendError, Problem, ServiceUnavailable
from op_dbus.plugin import SUBSCRIBED, Change, Context, Plugin, UndoLog, WatchEvent
from op_dbus.state import format_path

from .diff import diff as compute_diff
from .model import (
    FACTS_FLAG,
    LINGER_DIR,
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

__all__ = ["FACTS_FLAG", "Login1Plugin", "Login1State", "SessionFact", "UserFact", "scoped_state"]


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


def session_objects(scope: Login1State, sid: str, user: str | None) -> tuple[str, ...] | None:
    """The declared names a session appearing or going touches (its id and/or its user), None if it touches none.

    With `absent_remote` every session counts (whether it is remote is for the query to find out)."""
    want = scope.sessions
    if want is None:
        return None
    names = tuple(n for n, hit in ((user, user in want.absent_for_users), (sid, sid in want.absent)) if hit and n)
    if names:
        return names
    if want.absent_remote or (user is None and want.absent_for_users):
        return (sid,)
    return None


def user_objects(scope: Login1State, user: str | None) -> tuple[str, ...] | None:
    """The declared names a user's manager starting or stopping touches (linger, or sessions declared absent)."""
    if user is None:
        return tuple(scope.users) or None
    declared = user in scope.users or (scope.sessions is not None and user in scope.sessions.absent_for_users)
    return (user,) if declared else None


def linger_objects(scope: Login1State, name: str) -> tuple[str, ...] | None:
    """The declared user a flag file in the linger directory stands for (an empty name: the directory itself)."""
    if not name:
        return tuple(n for n, u in scope.users.items() if u.linger is not None) or None
    want = scope.users.get(name)
    return (name,) if want is not None and want.linger is not None else None


def caller_keys(msg: Any, user_of: Any) -> list[str]:
    """What a method call to logind's manager is about: the user (by name) or session it names."""
    if not msg.body:
        return []
    if msg.member in ("SetUserLinger", "TerminateUser", "KillUser", "CreateSession", "CreateSessionWithPIDFD"):
        name = user_of(msg.body[0]) if isinstance(msg.body[0], int) else None
        return [name] if name else []
    if msg.member in ("TerminateSession", "KillSession", "ActivateSession", "LockSession", "UnlockSession"):
        return [msg.body[0]] if isinstance(msg.body[0], str) else []
    return []


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


class Login1Plugin(Plugin[Login1State]):
    name = "login1"
    model = Login1State
    # Last: terminating sessions cannot be undone, so it happens after every other plugin has succeeded.
    order = 90

    # -- reading -------------------------------------------------------------------------------------

    async def _users(self, client: dbus.Client) -> list[UserFact]:
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

    async def _sessions(self, client: dbus.Client) -> list[SessionFact]:
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

    async def _seats(self, client: dbus.Client) -> list[SeatFact]:
        (rows,) = await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "ListSeats")
        seats = []
        for sid, path in rows:
            p = await client.get_all(LOGIN1, path, SEAT)
            active = p.get("ActiveSession", ("", "/"))[0]
            seats.append(SeatFact(id=sid, active_session=active, sessions=[s for s, _ in p.get("Sessions", [])]))
        return seats

    async def query(self, ctx: Context, scope: Login1State | None = None) -> Login1State:
        client = await dbus.system_client(ctx)
        try:
            users, sessions = await asyncio.gather(self._users(client), self._sessions(client))
        except ServiceUnavailable:
            if scope is not None:
                raise
            # no logind on this machine (a minimal container): nothing to write down, and not a failure
            return Login1State.model_construct(users={}, sessions=None, status=None)
        if scope is None:
            state = Login1State.model_construct(
                users={u.name: UserState.model_construct(linger=u.linger) for u in users}, sessions=None, status=None)
            if ctx.settings.extra.get(FACTS_FLAG):
                state.status = Status.model_construct(seats=await self._seats(client), sessions=sessions, users=users)
            return state
        return scoped_state(scope, users, sessions)

    def dump(self, state: Login1State) -> dict[str, Any]:
        out: dict[str, Any] = {"users": {n: u.model_dump(exclude_none=True) for n, u in state.users.items()}}
        if state.sessions is not None:
            s = state.sessions
            out["sessions"] = {"absent": list(s.absent), "absent_for_users": list(s.absent_for_users)}
            if s.absent_remote is not None:
                out["sessions"]["absent_remote"] = s.absent_remote
        if state.status is not None:
            out["status"] = state.status.model_dump(mode="json", by_alias=True)
        return out

    # -- watching ------------------------------------------------------------------------------------

    async def watch(self, scope: Login1State, ctx: Context) -> AsyncIterator[WatchEvent]:
        if not scope.users and scope.sessions is None:
            return
        client = await dbus.system_client(ctx)
        users: dict[int, str] = {}  # uid -> name, for signals that carry only a uid
        session_user: dict[str, str] = {}  # session id -> user name, for SessionRemoved (the object is gone then)

        def user_of(uid: int) -> str | None:
            if uid not in users:
                name = _user_name(uid)
                if name is None:
                    return None
                users[uid] = name
            return users[uid]

        callers = dbus.Callers(client, lambda msg: caller_keys(msg, user_of))
        await callers.start(ctx.settings.bus_address,
                            [f"type='method_call',destination='{LOGIN1}',interface='{MANAGER}'"])
        files = self._linger_files(scope, ctx)
        queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()
        rules = [f"type='signal',sender='{LOGIN1}',path='{LOGIN1_PATH}',interface='{MANAGER}',member='{m}'"
                 for m in ("SessionNew", "SessionRemoved", "UserNew", "UserRemoved")]
        # logind (252) never sends it for Linger; kept so that a logind that does is heard without the files
        rules.append(f"type='signal',sender='{LOGIN1}',interface='{dbus.PROPERTIES}',member='PropertiesChanged',"
                     f"path_namespace='{LOGIN1_PATH}/user',arg0='{USER}'")

        def accept(msg: Any) -> bool:
            if msg.member == "PropertiesChanged":
                return msg.body[0] == USER and "Linger" in set(msg.body[1]) | set(msg.body[2])
            return msg.interface == MANAGER and msg.path == LOGIN1_PATH

        async def from_bus() -> None:
            async for msg in client.signals(rules, accept, ready=True):
                if msg is None:
                    # learnt once subscribed, so that no session can slip between the listing and the subscription
                    with contextlib.suppress(BackendError):
                        (rows,) = await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "ListSessions")
                        session_user.update({row[0]: row[2] for row in rows})
                        (rows,) = await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "ListUsers")
                        users.update({int(row[0]): row[1] for row in rows})
                    await queue.put(None)
                    continue
                objects = await self._objects(scope, client, msg, user_of, session_user)
                if objects is not None:
                    await queue.put(WatchEvent(self.name, objects, f"login1 {msg.member}", await callers.recent(objects)))

        async def from_files() -> None:
            assert files is not None
            async for directory, mask, name in files.events():
                if mask & inotify.IN_Q_OVERFLOW:
                    name = ""  # notifications were lost: any flag may have changed
                elif directory != LINGER_DIR:
                    if name != "linger" or not files.add(LINGER_DIR):
                        continue
                    name = ""  # the directory appeared: every declared user's flag may be in it
                objects = linger_objects(scope, name)
                if objects is not None:
                    await queue.put(WatchEvent(self.name, objects, "linger file", await callers.recent(objects)))

        async def pump(source: Any) -> None:
            try:
                await source()
            except BaseException as e:  # handed to the consumer, which raises it in the agent's task
                queue.put_nowait(e)
                raise

        tasks = [asyncio.create_task(pump(from_bus))]
        if files is not None:
            tasks.append(asyncio.create_task(pump(from_files)))
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield WatchEvent(self.name, source=SUBSCRIBED) if item is None else item
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(BaseException):
                    await t
            callers.close()
            if files is not None:
                files.close()

    def _linger_files(self, scope: Login1State, ctx: Context) -> inotify.DirectoryWatch | None:
        """An inotify watch of the linger flag files, when lingering is declared and this is the managed machine."""
        if not any(u.linger is not None for u in scope.users.values()):
            return None
        if dbus.system_bus_address(ctx.settings.bus_address) != dbus.DEFAULT_SYSTEM_BUS:
            return None  # another machine's bus: its files are not ours to read
        try:
            files = inotify.DirectoryWatch()
        except BackendError:
            return None  # out of inotify instances: the periodic reconciliation still covers linger
        if not files.add(LINGER_DIR):
            # logind creates the directory with the first lingering user
            files.add(LINGER_DIR.rsplit("/", 1)[0], inotify.IN_CREATE | inotify.IN_MOVED_TO)
            files.add(LINGER_DIR)  # it may have appeared between the two calls
        return files

    async def _objects(self, scope: Login1State, client: dbus.Client, msg: Any, user_of: Any,
                       session_user: dict[str, str]) -> tuple[str, ...] | None:
        if msg.member == "SessionNew":
            sid, path = msg.body
            try:
                user = await client.get_property(LOGIN1, path, SESSION, "Name")
                session_user[sid] = user
            except BackendError:
                user = None  # already gone again
            return session_objects(scope, sid, user)
        if msg.member == "SessionRemoved":
            sid = msg.body[0]
            return session_objects(scope, sid, session_user.pop(sid, None))
        if msg.member in ("UserNew", "UserRemoved"):
            return user_objects(scope, user_of(int(msg.body[0])))
        # PropertiesChanged of a user object: /org/freedesktop/login1/user/_UID
        tail = msg.path.rsplit("/", 1)[-1]
        return user_objects(scope, user_of(int(tail[1:])) if tail[1:].isdigit() else None)

    # -- checking ------------------------------------------------------------------------------------

    async def check(self, desired: Login1State, ctx: Context) -> list[Problem]:
        client = await dbus.system_client(ctx)
        known = {u.name for u in await self._users(client)}
        problems = []
        names = [("users", n) for n in desired.users]
        if desired.sessions is not None:
            names += [(f"sessions.absent_for_users[{i}]", n) for i, n in enumerate(desired.sessions.absent_for_users)]
        for where, name in names:
            if name in known:
                continue
            try:
                pwd.getpwnam(name)
            except KeyError:
                path = format_path(("plugins", "login1", "users", name)) if where == "users" else f"plugins.login1.{where}"
                problems.append(Problem(path, f"no such user on this system: {name!r}"))
        return problems

    # -- planning ------------------------------------------------------------------------------------

    def diff(self, desired: Login1State, current: Login1State) -> list[Change]:
        return compute_diff(desired, current)

    # -- applying ------------------------------------------------------------------------------------

    async def apply(self, changes: list[Change], ctx: Context, undo: UndoLog) -> None:
        client = await dbus.system_client(ctx)
        # Reversible first: a failure there is rolled back before anything irreversible has happened.
        for c in [c for c in changes if c.action != "terminate"]:
            uid = c.payload["uid"]
            if uid is None:
                uid = _uid(c.payload["user"])
            undo.record(Change(self.name, c.object, "unlinger" if c.payload["linger"] else "linger", c.after, c.before,
                               payload={**c.payload, "uid": uid, "linger": not c.payload["linger"]}))
            await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "SetUserLinger", "ubb", [uid, c.payload["linger"], False])
        terminations = [c for c in changes if c.action == "terminate"]
        for c in terminations:
            # No inverse exists: killed processes cannot be brought back (the change says reversible: false).
            undo.irreversible(c)
            p = c.payload
            if p.get("whole_user") and p.get("uid") is not None:
                await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "TerminateUser", "u", [p["uid"]])
            else:
                for sid in p["ids"]:
                    await _ignore_gone(client.call(LOGIN1, LOGIN1_PATH, MANAGER, "TerminateSession", "s", [sid]))
        if terminations:
            await self._wait_gone({sid for c in terminations for sid in c.payload["ids"]}, client,
                                  ctx.settings.job_timeout)

    async def _wait_gone(self, ids: set[str], client: dbus.Client, timeout: float) -> None:
        """logind removes a session once its scope's processes are gone; wait for that rather than guess."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            (rows,) = await client.call(LOGIN1, LOGIN1_PATH, MANAGER, "ListSessions")
            left = sorted(ids & {row[0] for row in rows})
            if not left:
                return
            if loop.time() > deadline:
                raise ApplyFailed(f"sessions still present {timeout:.0f} s after TerminateSession: {', '.join(left)}",
                                  hint="look at `loginctl session-status ID` for processes that ignore SIGTERM")
            await asyncio.sleep(0.05)


async def _ignore_gone(call: Any) -> None:
    try:
        await call
    except BackendError as e:
        # the session ended on its own between the plan and now: the goal is reached
        if e.code != "org.freedesktop.login1.NoSuchSession":
            raise


def _uid(name: str) -> int:
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        raise ApplyFailed(f"no such user: {name!r}") from None
