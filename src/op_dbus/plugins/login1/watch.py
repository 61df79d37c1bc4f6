"""Change notifications for the login1 plugin: logind's signals, the linger flag files, and who made the change."""

from __future__ import annotations

import asyncio
import contextlib
import pwd
from collections.abc import AsyncIterator
from typing import Any

from op_dbus.backends import dbus, inotify
from op_dbus.errors import BackendError
from op_dbus.plugin import SUBSCRIBED, Context, WatchEvent

from .diff import PLUGIN
from .model import LINGER_DIR, LOGIN1, LOGIN1_PATH, MANAGER, SESSION, USER, Login1State


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


async def watch(scope: Login1State, ctx: Context) -> AsyncIterator[WatchEvent]:
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
    files = linger_files(scope, ctx)
    queue: asyncio.Queue[WatchEvent | BaseException | None] = asyncio.Queue()
    rules = [f"type='signal',sender='{LOGIN1}',path='{LOGIN1_PATH}',interface='{MANAGER}',member='{m}'"
             for m in ("SessionNew", "SessionRemoved", "UserNew", "UserRemoved")]
    # logind (252) never sends it for Linger; kept so that a logind that does is heard without the files
    rules.append(f"type='signal',sender='{LOGIN1}',interface='{dbus.PROPERTIES}',member='PropertiesChanged',"
                 f"path_namespace='{LOGIN1_PATH}/user',arg0='{USER}'")

    def accept(msg: Any) -> bool:
        if msg.member == "PropertiesChanged":
            return msg.body[0] == USER and "Linger" in set(msg.body[1]) | set(msg.body[2])
        return bool(msg.interface == MANAGER and msg.path == LOGIN1_PATH)

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
            objects = await objects_of(scope, client, msg, user_of, session_user)
            if objects is not None:
                await queue.put(WatchEvent(PLUGIN, objects, f"login1 {msg.member}", await callers.recent(objects)))

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
                await queue.put(WatchEvent(PLUGIN, objects, "linger file", await callers.recent(objects)))

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
            yield WatchEvent(PLUGIN, source=SUBSCRIBED) if item is None else item
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        callers.close()
        if files is not None:
            files.close()


def linger_files(scope: Login1State, ctx: Context) -> inotify.DirectoryWatch | None:
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


async def objects_of(scope: Login1State, client: dbus.Client, msg: Any, user_of: Any,
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
